"""MkDocs hook: `\\|` inside a code span of a table row shows as `|` on the site, as on GitHub.

GitHub's Markdown splits table cells at every unescaped `|`, even inside backticks, so the pages
write `--kind fac\\|lin` in tables. Python-Markdown does not split at a `|` inside backticks, and
keeps the backslash there; this hook removes it before the page is converted.
"""

import re

CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def on_page_markdown(markdown, **kwargs):
    lines, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|"):
            line = CODE_SPAN.sub(lambda m: m.group(1) + m.group(2).replace("\\|", "|") + m.group(1), line)
        lines.append(line)
    return "\n".join(lines)
