"""Open-domain extractive QA (SearchQA, Quasar-T): the data formats users hold, windows of question
+ paragraph with distant supervision, span decoding, and the tasks themselves."""

from kadapter_cli.tasks.open_qa import task  # noqa: F401  registers searchqa and quasart
