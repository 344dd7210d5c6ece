"""Upload a built publish folder to the Hugging Face Hub: resumable, and never leaking the token.

Why it is resumable: ``HfApi.upload_folder`` is the one upload call of huggingface_hub 2.x
(``upload_large_folder`` is gone). With hf_xet installed (the default) it streams the folder in
several commits and a re-run skips committed files (their oid matches) and re-sends no stored
chunk; without Xet it makes one commit after the LFS batch API, which answers "already stored"
for every large file a previous run finished, so those are not sent again. Either way the way
to resume is to run the same command again. Files are given as paths, so the client hashes and
sends them in chunks: nothing is read whole into memory.

Why the error handling: huggingface_hub's exceptions carry URLs, server text and sometimes
request details; they are turned into one-line weightsmith errors whose text has the token,
any Authorization value and any URL credentials taken out, and whose traceback chain does not
hold the original exception.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import weightsmith.progress as progress_bars
from weightsmith.errors import NotFoundError, OutputError, UsageError, WeightsmithError

LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"
RESUME_HINT = "run the same command again to resume: files already on the Hub are not sent again"

# The Hub's repo id rules (huggingface_hub's validate_repo_id): [namespace/]name, each 1-96 of
# letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no '--' or '..'.
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}", re.ASCII)
# A git branch name as the Hub takes it (also refs/pr/N): no spaces, control bytes, '..', '~^:?*[\'.
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}", re.ASCII)

_SECRET_PATTERNS = (
    # "authorization: Bearer xyz", "'Authorization': 'Basic xyz'", "authorization=xyz"
    (
        re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(?:bearer|basic|token)\s+)?[^\s'\",;})\]]+"),
        r"\1***",
    ),
    (re.compile(r"(?i)\bbearer\s+[^\s'\",;})\]]+"), "Bearer ***"),
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), "hf_***"),  # anything shaped like a Hub token
    (re.compile(r"://[^/\s@]+@"), "://***@"),  # credentials in a URL (an HF_ENDPOINT with user:pass)
)


def scrub(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` with every secret given, Authorization value, token-shaped string and URL
    credential replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def check_repo_id(repo_id: str) -> str:
    """The repo id as the Hub accepts it, or a UsageError naming what is wrong (before any request)."""
    rid = repo_id.strip() if isinstance(repo_id, str) else ""
    if (
        not _REPO_ID.fullmatch(rid)
        or "--" in rid
        or ".." in rid
        or rid.endswith(".git")
        or rid.split("/")[0] in ("models", "datasets", "spaces")
        and "/" in rid
    ):
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id",
            hint="check --repo-id: use NAMESPACE/NAME (your user or organization, then up to 96 letters, "
            "digits, '-', '_' or '.'; no '--' or '..', not starting or ending with '-' or '.')",
        )
    return rid


def check_revision(revision: str | None) -> str | None:
    if revision is None:
        return None
    if not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(("/", ".lock", ".")):
        raise UsageError(
            f"--revision {revision!r} is not a branch name the Hub accepts",
            hint="check --revision: letters, digits, '-', '_', '.' and '/', e.g. 'main' or 'quants-v2'",
        )
    return revision


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """huggingface_hub's bars on a terminal only (quiet in CI and pipes), restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()
        else:
            enable_progress_bars()


def upload_folder_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload with weightsmith",
    progress: bool = True,
    endpoint: str | None = None,
) -> str:
    """Create the model repo if needed and upload every file under ``folder``; returns the URL of
    the (last) commit. The token comes from HF_TOKEN or the user's login (huggingface_hub's own
    lookup) and is never printed, logged or put into an error. ``private`` applies when the repo
    is created; an existing repo keeps its visibility. ``endpoint``: a Hub other than HF_ENDPOINT's."""
    folder = Path(folder)
    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    if not folder.is_dir():
        raise NotFoundError(
            f"publish folder {folder} does not exist or is not a folder",
            hint="build it first (weightsmith publish DIR --dry-run shows what would be uploaded)",
        )
    from huggingface_hub import HfApi, get_token

    token: str | None = None
    error: WeightsmithError | None = None
    try:
        token = get_token()  # HF_TOKEN, then the saved login (or a CI's OIDC exchange)
        if not token:
            raise UsageError("not logged in to the Hugging Face Hub", hint=LOGIN_HINT)
        with _progress_bars(progress and progress_bars.wanted()):
            api = HfApi(endpoint=endpoint)
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision is not None and revision != "main" and not revision.startswith("refs/"):
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
            )
        return str(info.commit_url)
    except Exception as e:  # noqa: BLE001 - every client failure becomes a scrubbed weightsmith error
        error = hub_error(e, repo_id=repo_id, revision=revision, token=token)
    # Raised outside the except block so the original (unscrubbed) exception is not its context.
    raise error


def hub_error(
    e: BaseException, *, repo_id: str, revision: str | None = None, token: str | None = None
) -> WeightsmithError:
    """The weightsmith error for a huggingface_hub failure: one scrubbed line and what to do."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def said(err: BaseException) -> str:
        parts: list[str] = []
        while err is not None and len(parts) < 4:  # the cause usually says more than the wrapper
            text = getattr(err, "server_message", None) or str(err) or type(err).__name__
            if not any(text in p for p in parts):
                parts.append(text)
            if getattr(err, "server_message", None):
                break
            err = err.__cause__
        line = " ".join(scrub(": ".join(parts), (token,)).split())
        return line if len(line) <= 300 else line[:297] + "..."

    sending = (
        re.match(r"Error while uploading '(.+)' to the Hub", str(e)) if isinstance(e, RuntimeError) else None
    )
    if sending and e.__cause__ is not None:  # one LFS transfer failed (network, storage URL expired...)
        return OutputError(
            f"sending {scrub(sending.group(1), (token,))} to the Hub's storage failed ({said(e.__cause__)})",
            hint=RESUME_HINT,
        )
    if isinstance(e, WeightsmithError):
        return UsageError(scrub(e.message, (token,)), hint=scrub(e.hint or LOGIN_HINT, (token,)))
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    if isinstance(e, RevisionNotFoundError):
        return UsageError(
            f"the Hub has no revision {revision!r} in {repo_id}", hint="check --revision (a branch name)"
        )
    if isinstance(e, RepositoryNotFoundError):
        return UsageError(
            f"the Hub repository {repo_id} was not found or this token cannot write to it",
            hint=f"check --repo-id (a namespace you can write to), or {LOGIN_HINT}",
        )
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        if status == 401:
            return UsageError(f"the Hub refused the token (HTTP 401) for {where}", hint=LOGIN_HINT)
        if status == 403:
            return UsageError(
                f"no write access to {where} (HTTP 403: {said(e)})",
                hint=f"check --repo-id (your user or an organization you belong to), or {LOGIN_HINT}",
            )
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return UsageError(
                f"the Hub refused the upload to {where} (HTTP {status}: {said(e)})",
                hint="check --repo-id, --revision and the card's metadata",
            )
        return OutputError(f"the Hub failed the upload to {where} ({said(e)})", hint=RESUME_HINT)
    if isinstance(e, HFValidationError):
        return UsageError(
            f"huggingface_hub refused the arguments: {said(e)}", hint="check --repo-id and --revision"
        )
    if isinstance(e, OfflineModeIsEnabled):
        return UsageError(
            "cannot upload while HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE, or use --dry-run"
        )
    if isinstance(e, ValueError):  # bad README metadata, malformed server answers
        return UsageError(f"the upload to {where} was refused: {said(e)}", hint="check the card's metadata")
    if isinstance(e, ConnectionError) or "Connect" in type(e).__name__:
        from huggingface_hub import constants

        return OutputError(
            f"cannot reach the Hub at {scrub(constants.ENDPOINT, (token,))} ({said(e)})",
            hint=f"check the network and HF_ENDPOINT; {RESUME_HINT}",
        )
    if isinstance(e, OSError | RuntimeError) or type(e).__module__.startswith(("httpx", "httpcore")):
        return OutputError(
            f"the upload to {where} failed: {said(e)}", hint=f"check the network; {RESUME_HINT}"
        )
    return OutputError(f"the upload to {where} failed: {type(e).__name__}: {said(e)}", hint=RESUME_HINT)
