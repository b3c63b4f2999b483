"""Publish a trained adapter to the Hugging Face Hub: ``loracord publish`` and ``/adapter publish``.

Nothing is half-published. Everything that can be checked here is checked before the Hub is
written to: the repository's name, the token (``HF_TOKEN``), its right to write in that
namespace (the Hub's ``whoami``), the folder and its card (read back by huggingface_hub's own
card parser). Only then is the repository created, and the files go up in one commit, which the
Hub applies whole or not at all; a repository this call created is deleted again if that commit
fails. Each way it can go wrong is one ``PublishError`` that says which, and what to do.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# The Hub's rule for a repository id (huggingface_hub.utils.validate_repo_id), with the namespace
# required: a bare NAME would land in whichever account the token belongs to.
_REPO = re.compile(r"^(?P<user>[A-Za-z0-9][\w.-]{0,95})/(?P<name>[A-Za-z0-9][\w.-]{0,95})$")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class PublishError(UserError):
    """The adapter cannot be published; the message says why (name, token, rights, Hub) and what to do."""


@dataclass(frozen=True)
class Published:
    repo: str
    url: str  # the repository's page
    commit: str  # the one commit that holds every file
    files: tuple[str, ...]
    created: bool  # whether this call created the repository


def check_repo_name(repo: str) -> str:
    """``repo`` if it is spelled ``USER/NAME`` the way the Hub accepts, else a PublishError."""
    repo = (repo or "").strip()
    match = _REPO.fullmatch(repo)
    if not match or ".." in repo or "--" in repo or repo.endswith((".git", ".")):
        raise PublishError(f"{repo!r} is not a Hub repository name: give it as USER/NAME (your Hub user or "
                           "organization, a slash, then letters, digits, '-', '_' or '.'), e.g. alice/fox-lora.")
    return repo


def hub_token(token: str | None = None) -> str:
    """The token to publish with: ``token``, else ``HF_TOKEN`` (or a saved ``hf auth login``)."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(f"No Hugging Face token: set HF_TOKEN to a token with write access (make one at "
                           f"{TOKENS_PAGE}), then publish again. Nothing was uploaded.")
    return token


def publish_folder(folder: Path, repo: str, *, private: bool = False, token: str | None = None,
                   message: str = "Upload LoRA adapter trained with loracord") -> Published:
    """Upload every file of ``folder`` (an adapter with its README.md card) to ``repo`` in one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo = check_repo_name(repo)
    folder = Path(folder)
    files = tuple(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
    if "README.md" not in files:
        raise PublishError(f"{folder} has no README.md model card; export the run again to write one.")
    check_card((folder / "README.md").read_text(encoding="utf-8"))
    api = HfApi(token=hub_token(token))
    _check_rights(api, repo)
    created = False
    try:
        try:
            url = api.create_repo(repo, private=private, repo_type="model")
            created = True
        except HfHubHTTPError as exc:
            if _status(exc) != 409:  # 409: it exists already, and the token may write there
                raise
            url = f"{api.endpoint}/{repo}"
        commit = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="model", commit_message=message)
    except Exception as exc:
        if created:
            _delete_quietly(api, repo)
        raise _explain(exc, repo) from exc
    return Published(repo=repo, url=str(url), commit=commit.oid, files=files, created=created)


def check_card(text: str):
    """The card as huggingface_hub's own parser reads it; a PublishError if it does not read."""
    import yaml
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise PublishError(f"The adapter's model card does not parse ({exc}); export the run again.") from exc
    if not card.data.library_name or "loracord" not in (card.data.tags or []):
        raise PublishError("The adapter's README.md is not loracord's model card; export the run again to write it.")
    return card


def stage_run(run_root: Path, repo: str, dest: Path, *, data=()) -> Path:
    """A folder ready to publish from a run folder: the adapter's files, its card naming ``repo``,
    the sample grids the card shows, a GGUF export if one was made, and ``data`` (files the
    session's owner chose to share: ``training_files(run)`` from the CLI) under ``data/``."""
    import json

    from .card import ADAPTER_CONFIG, GGUF_ADAPTER, model_card, portable_adapter_config
    from .rundir import RunDir

    run = RunDir.open(run_root)
    if not run.adapter.is_dir():
        raise PublishError(f"{run.root} has no adapter/ folder: the run did not finish a step. Nothing was uploaded.")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run.adapter, dest, ignore=shutil.ignore_patterns("README.md", "*.tmp"))
    metrics = run.read_metrics()
    config_file = dest / ADAPTER_CONFIG
    if config_file.is_file():
        config = portable_adapter_config(json.loads(config_file.read_text(encoding="utf-8")), metrics.get("base", ""))
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    for grid in metrics.get("samples") or []:  # image runs: grids named relative to the run folder
        if (run.root / grid).is_file():
            (dest / grid).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run.root / grid, dest / grid)
    gguf = run.root / "export" / GGUF_ADAPTER  # written by `loracord export RUN --gguf`: published with it
    if gguf.is_file():
        shutil.copy2(gguf, dest / GGUF_ADAPTER)
    shared = []
    for path in data:
        (dest / "data").mkdir(exist_ok=True)
        shutil.copy2(path, dest / "data" / Path(path).name)
        shared.append(f"data/{Path(path).name}")
    samples_file = run.root / "samples.json"
    samples = json.loads(samples_file.read_text(encoding="utf-8")) if samples_file.is_file() else None
    card = model_card(metrics, samples, adapter=repo, roots=(run.root, Path.home()), beside=_beside(dest),
                      data_files=sorted(set(shared)))
    (dest / "README.md").write_text(str(card), encoding="utf-8")
    return dest


def _beside(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def training_files(run_root: Path) -> list[Path]:
    """The files a run trained on (its config's data: files, and the files of folders), where they still are."""
    from .rundir import RunDir

    found = []
    for source in (RunDir.open(run_root).read_metrics().get("config") or {}).get("data") or []:
        source = Path(source)
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        found += [p for p in files if p.is_file() and not p.name.startswith(".")]
    return found


def _check_rights(api, repo: str) -> None:
    """Ask the Hub who the token is, and refuse a read-only token or a namespace it cannot write."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        me = api.whoami()
    except Exception as exc:
        if isinstance(exc, HfHubHTTPError) and _status(exc) == 401:
            raise PublishError(f"The Hub does not accept this token (HF_TOKEN): make a new one with write access at "
                               f"{TOKENS_PAGE}. Nothing was uploaded.") from exc
        raise _explain(exc, repo) from exc
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(f"The token (HF_TOKEN) of {me.get('name')} can only read: make one with write access at "
                           f"{TOKENS_PAGE}. Nothing was uploaded.")
    namespace = repo.split("/")[0]
    orgs = {o.get("name"): o.get("roleInOrg") for o in me.get("orgs") or []}
    if namespace != me.get("name") and orgs.get(namespace) in (None, "read"):
        raise PublishError(f"The token (HF_TOKEN) belongs to {me.get('name')}, who cannot write in {namespace!r}: "
                           f"publish as {me.get('name')}/{repo.split('/')[1]}, or use a token of {namespace!r}. "
                           "Nothing was uploaded.")


def _status(exc) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _explain(exc: BaseException, repo: str) -> PublishError:
    """One line for a failed Hub call: unreachable, no right to write, or what the Hub said."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, PublishError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return PublishError("This host runs with HF_HUB_OFFLINE=1, so it does not reach the Hugging Face Hub: "
                            "publish from a machine that does. Nothing was published.")
    if isinstance(exc, _transport_errors()):
        return PublishError(f"The Hugging Face Hub cannot be reached from here ({type(exc).__name__}); try again "
                            "later. Nothing was published.")
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        if status in (401, 403):
            return PublishError(f"The token (HF_TOKEN) may not write to {repo}: use a token with write access to it "
                                f"({TOKENS_PAGE}). Nothing was published.")
        said = str(exc).splitlines()[0][:200]
        return PublishError(f"The Hub refused the upload to {repo} ({status}: {said}). Nothing was published.")
    raise exc


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _delete_quietly(api, repo: str) -> None:
    """Remove a repository this call created before its commit failed, so nothing half-made stays."""
    try:
        api.delete_repo(repo, repo_type="model", missing_ok=True)
    except Exception:  # noqa: BLE001 - the upload's own error is the one to report
        pass
