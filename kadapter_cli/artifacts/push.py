"""`kadapter push`: an adapter, a composition or a finetuned model to a Hugging Face Hub repository.

What goes is exactly the artifact as its manifest describes it: manifest.json and every file it
lists (checked against their sha256 first), adapter files under their current names (an adapter
written before kadapter 0.2 goes as `kadapter_adapter.json`, ..., its manifest saying so), and the
card, whose front matter carries what the Hub reads (`library_name: kadapter`, `base_model`,
`base_model_relation`, `tags`; filled in on a card written before kadapter 0.2, which lacked some).
Upload through `huggingface_hub`: `create_repo(exist_ok=True)` (and `create_branch` for a
revision), then `upload_folder`. `dry_run` says what would go and touches no network.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from kadapter_cli.artifacts.cards import CARD, card_meta, composition_card
from kadapter_cli.artifacts.hub import hub_endpoint, hub_offline, parse_hub_ref
from kadapter_cli.artifacts.io import read_json, sha256_file, write_json
from kadapter_cli.artifacts.layout import ADAPTER_CONFIG, adapter_file
from kadapter_cli.artifacts.manifest import MANIFEST, link_artifact, read_manifest, verify_files
from kadapter_cli.artifacts.sources import MODEL_KINDS
from kadapter_cli.errors import BadInput, BadParameter, ParamText

RELATIONS = {"adapter": "adapter", "composition": "adapter", "finetuned": "finetune"}


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         dry_run: bool = False) -> dict[str, Any]:
    """Pushes an artifact folder to `repo_id` (`org/name`) on the Hub (`HF_ENDPOINT`; the token of
    `hf auth login` or `HF_TOKEN`), creating the repository (`private`) and the branch `revision`
    if they do not exist. Returns `{"repo_id", "revision", "private", "kind", "files": [{"path",
    "size"}], "card": front matter}`, and after a push `url` and `commit`; `dry_run` only that."""
    folder = Path(folder)
    ref = parse_hub_ref(repo_id)
    if ref is None or ref.revision is not None:
        raise BadParameter("{repo_id} must be ORG/NAME (a Hugging Face Hub repository id; a branch goes in "
                           "{revision}), got {value!r}", repo_id)
    manifest = read_manifest(folder)
    if manifest["kind"] not in MODEL_KINDS:
        raise BadInput(f"a {manifest['kind']!r} artifact: push takes an adapter, a composition or a finetuned "
                       "model", folder)
    verify_files(folder, manifest)
    with staged(folder, manifest["kind"]) as stage:
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        result: dict[str, Any] = {
            "repo_id": repo_id, "revision": revision or "main", "private": private, "kind": manifest["kind"],
            "files": [{"path": f, "size": (stage / f).stat().st_size} for f in files],
            "card": front_matter((stage / CARD).read_text(encoding="utf-8")),
        }
        if not dry_run:
            result.update(_upload(stage, repo_id, private, revision, manifest["kind"], folder.name))
    return result


@contextlib.contextmanager
def staged(folder: Path, kind: str) -> Iterator[Path]:
    """A temporary copy (hard links) of what goes to the Hub: the manifest, the files it lists under
    their current names, and a card with the Hub's metadata."""
    with tempfile.TemporaryDirectory(prefix="kadapter-push-") as tmp:
        stage = Path(tmp) / folder.name
        link_artifact(folder, stage)
        listed = set(read_json(stage / MANIFEST).get("files", {})) | {MANIFEST, CARD}
        for path in sorted(stage.rglob("*"), reverse=True):  # files first, then emptied folders
            rel = path.relative_to(stage).as_posix()
            if path.is_file() and rel not in listed:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        _card_with_hub_metadata(stage, kind)
        yield stage


def _backbone_of(stage: Path, kind: str) -> tuple[str, dict[str, Any]]:
    """`(backbone, fingerprint)` the artifact records."""
    if kind == "adapter":
        config = read_json(adapter_file(stage, ADAPTER_CONFIG))
    elif kind == "finetuned":
        config = read_json(stage / "config.json")
    else:
        comp = read_json(stage / "composition.json")
        first = stage / "adapters" / comp["adapters"][0]["name"]
        config = {**read_json(adapter_file(first, ADAPTER_CONFIG)), "backbone": comp.get("backbone")}
    return str(config.get("backbone")), dict(config.get("backbone_fingerprint") or {})


def _card_with_hub_metadata(stage: Path, kind: str) -> None:
    """Makes the staged card carry `library_name`, `base_model`, `base_model_relation` and the
    `kadapter` tag (cards written before kadapter 0.2 lacked some; a composition had none). A card
    that changes is a new file, and the staged manifest lists its sha256."""
    card_path = stage / CARD
    backbone, fingerprint = _backbone_of(stage, kind)
    wanted = card_meta(backbone, fingerprint, RELATIONS[kind], ["kadapter"])
    if card_path.is_file():
        text = card_path.read_text(encoding="utf-8")
        meta, body = front_matter(text), _body(text)
    else:
        comp_card = composition_card(stage.name, read_json(stage / "composition.json"), []) \
            if kind == "composition" else f"---\n---\n# {stage.name}\n\nA kadapter {kind}.\n"
        meta, body = front_matter(comp_card), _body(comp_card)
    tags = list(meta.get("tags") or [])
    if "base_model" not in wanted:  # the backbone as recorded now: not on the Hub
        meta = {k: v for k, v in meta.items() if k not in ("base_model", "base_model_relation")}
    meta = {**meta, **{k: v for k, v in wanted.items() if k != "tags"},
            "tags": tags + [t for t in wanted["tags"] if t not in tags]}
    new_text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body
    if card_path.is_file() and card_path.read_text(encoding="utf-8") == new_text:
        return
    card_path.unlink(missing_ok=True)  # a hard link: the artifact's own card stays as it was
    card_path.write_text(new_text, encoding="utf-8")
    manifest = read_json(stage / MANIFEST)
    if CARD in manifest.get("files", {}):
        (stage / MANIFEST).unlink()
        write_json(stage / MANIFEST, {**manifest, "files": {**manifest["files"], CARD: sha256_file(card_path)}})


def front_matter(card: str) -> dict[str, Any]:
    """A card's YAML front matter (between the leading `---` lines); {} without one."""
    if not card.startswith("---\n"):
        return {}
    end = card.find("\n---\n", 3)
    meta = yaml.safe_load(card[4:end]) if end >= 0 else None
    return meta if isinstance(meta, dict) else {}


def _body(card: str) -> str:
    if not card.startswith("---\n"):
        return card
    end = card.find("\n---\n", 3)
    return card[end + 5:] if end >= 0 else card


def _upload(stage: Path, repo_id: str, private: bool, revision: str | None, kind: str, name: str) -> dict[str, Any]:
    """create_repo + (create_branch) + upload_folder; errors as `BadInput`."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    endpoint = hub_endpoint()
    if hub_offline():
        raise BadInput(ParamText("HF_HUB_OFFLINE is set and pushing needs the network; {dry_run:True} shows what "
                                 "would go"))
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(stage), revision=revision,
                                   commit_message=f"kadapter push: {kind} {name}")
    except hub_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        advice = " (log in with `hf auth login`, or set HF_TOKEN to a token that may write there)" \
            if status in (401, 403) else ""
        raise BadInput(f"{repo_id}: {endpoint} refused the push: {str(e).splitlines()[0]}{advice}") from None
    except (OSError, ValueError) as e:  # no connection, no token
        raise BadInput(f"{repo_id}: cannot push to {endpoint}: {str(e).splitlines()[0]}") from None
    return {"url": f"{endpoint}/{repo_id}", "commit": commit.oid}
