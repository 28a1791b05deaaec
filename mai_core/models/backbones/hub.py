"""Downloading published weight files, and saying in words why a download cannot happen.

Two kinds of source: a file in a Hugging Face hub repository (through ``huggingface_hub``, so ``HF_ENDPOINT``
mirrors, ``HF_TOKEN`` / a stored login and ``HTTPS_PROXY`` are honoured) and a plain https URL (torchvision's
AlexNet). Each download goes to a partial file that survives interruption and is resumed (HTTP range
request) by the next attempt; the finished file is checked against the published checksum (the hub's
sha256 for large files, the sha256 prefix in torchvision file names) and deleted when it does not match.

Offline is a state, not a failure: ``HF_HUB_OFFLINE=1`` (or ``--offline``) means nothing is fetched, and
every refusal names the command to run where a network exists and the ``weights import`` alternative.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from mai_core.errors import MaiError, Problem

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE = ("1", "on", "yes", "true")
_FORCED_OFFLINE: list[bool] = []  # set by offline_mode(True) (train --offline)


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository (``revision`` None: the default branch)."""

    repo: str
    filename: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"hf://{self.repo}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class UrlFile:
    """A file at a plain URL; ``sha256_prefix`` is the checksum published with it (e.g. in its name)."""

    url: str
    sha256_prefix: str | None = None

    @property
    def label(self) -> str:
        return self.url

    @property
    def filename(self) -> str:
        return os.path.basename(urlparse(self.url).path)


@dataclass
class Downloaded:
    """A verified download in the partial folder, with what the server said about it."""

    path: Path
    sha256: str
    size: int
    commit: str | None
    checksum: str  # how it was verified: "sha256", "git-sha1", "sha256-prefix" or "none published"
    resumed_from: int = 0


# --------------------------------------------------------------------------------------------- state


def offline_reason() -> str | None:
    """Why nothing may be downloaded now (None: downloads are allowed)."""
    if _FORCED_OFFLINE and _FORCED_OFFLINE[-1]:
        return "offline mode was requested (--offline)"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in TRUE:
            return f"{var}={os.environ[var]} is set"
    return None


@contextlib.contextmanager
def offline_mode(flag: bool = True) -> Iterator[None]:
    """Within the block nothing is downloaded when ``flag`` (e.g. ``train --offline``)."""
    _FORCED_OFFLINE.append(bool(flag))
    try:
        yield
    finally:
        _FORCED_OFFLINE.pop()


def endpoint() -> str:
    """The hub address (``HF_ENDPOINT`` when set: a mirror), read at call time."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _hub_calls_allowed() -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; our own check has already allowed this call."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _call(fn, **kwargs):
    """Call ``fn`` with the keyword arguments its signature accepts (huggingface_hub versions differ)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(**kwargs)


# --------------------------------------------------------------------------------------------- messages


def where_to_run(name: str) -> str:
    return f"python -m mai_core weights pull {name}"


def offline_error(name: str, source, cache_file: Path, why: str) -> MaiError:
    """The message for 'cannot download here': what to run elsewhere, what to copy, or import by hand."""
    return MaiError(
        f"cannot download the {name} weights: {why}",
        [Problem(source.label, "not downloaded on this machine",
                 f"on a machine with network access run `{where_to_run(name)}`, then copy {cache_file.name} "
                 f"and {cache_file.with_suffix('.json').name} into {cache_file.parent} here"),
         Problem("hand-copied file", f"the published file is {source.filename} ({source.label})",
                 f"copy it here and run `python -m mai_core weights import FILE --backbone {name}`")],
        hint="unset HF_HUB_OFFLINE (and drop --offline) on a machine that can reach the hub",
    )


def gated_error(name: str, src: HubFile, status: int | None) -> MaiError:
    from huggingface_hub import get_token

    page = f"{endpoint()}/{src.repo}"
    has_token = bool(_call(get_token))
    what = (f"the hub refused access (HTTP {status or '401/403'}): "
            + ("your token has no access to this gated repository yet" if has_token
               else "this repository is gated and no Hugging Face token is set"))
    return MaiError(
        f"{name}: access to {src.repo} must be requested first",
        [Problem(page, what, f"open {page}, log in and request access (accept the conditions); once granted, "
                             "create a read token at https://huggingface.co/settings/tokens"),
         Problem("HF_TOKEN", "set" if has_token else "not set",
                 "export HF_TOKEN=hf_... (or run `hf auth login`) in the shell that runs mai_core")],
        hint=f"then run `{where_to_run(name)}` again",
    )


def _status(exc) -> int | None:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return int(code) if isinstance(code, int) else None


def explain(exc: Exception, name: str, source, cache_file: Path) -> MaiError:
    """A MaiError for an exception raised while fetching ``source`` (gated, not found, offline, HTTP)."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    status = _status(exc)
    if isinstance(source, HubFile) and ("GatedRepoError" in kinds or status in (401, 403)
                                        and "RepositoryNotFoundError" not in kinds):
        return gated_error(name, source, status)
    if "RepositoryNotFoundError" in kinds:
        return MaiError(f"{name}: repository {source.repo} not found on {endpoint()}",
                        [Problem(source.label, f"HTTP {status or 404}: no such repository (or it is private)",
                                 "check HF_ENDPOINT and the repository id; private repositories need HF_TOKEN")])
    if kinds & {"EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"} or status == 404:
        return MaiError(f"{name}: {source.label} does not exist",
                        [Problem(source.label, f"HTTP {status or 404}", "the publisher may have renamed the file; "
                                 "import a copy with `python -m mai_core weights import`")])
    if "Consistency check failed" in str(exc):
        return MaiError(f"{name}: the download of {source.label} stopped early",
                        [Problem(source.label, str(exc).splitlines()[0][:200],
                                 f"run `{where_to_run(name)}` again: it resumes where it stopped")])
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.ENOSPC:
        return MaiError(f"{name}: no space left on the device while downloading {source.label}",
                        [Problem(str(cache_file.parent), "disk full", "free some space, then pull again (it resumes)")])
    network = {"ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ConnectionError",
               "ProxyError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "NetworkError", "URLError",
               "RemoteProtocolError", "TimeoutError", "gaierror"}
    if kinds & network or (isinstance(exc, OSError) and status is None):
        return offline_error(name, source, cache_file,
                             f"{urlparse(source.label if isinstance(source, UrlFile) else endpoint()).netloc or 'the hub'}"
                             f" cannot be reached from this machine ({type(exc).__name__})")
    if status is not None:
        return MaiError(f"{name}: the server answered HTTP {status} for {source.label}",
                        [Problem(source.label, str(exc).splitlines()[0][:200], "try again later")])
    return MaiError(f"{name}: download of {source.label} failed",
                    [Problem(source.label, f"{type(exc).__name__}: {exc}"[:300], "try again")])


# --------------------------------------------------------------------------------------------- checksums


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _git_blob_sha1(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, etag: str | None, prefix: str | None, label: str) -> tuple[str, str]:
    """(sha256 of the file, how it was checked); MaiError (file deleted) when it does not match."""
    sha = file_sha256(path)
    etag = (etag or "").strip('"').lower().removeprefix("w/").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        expected, got, how = etag, sha, "sha256"
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        expected, got, how = etag, _git_blob_sha1(path), "git-sha1"
    elif prefix:
        expected, got, how = prefix.lower(), sha[:len(prefix)], "sha256-prefix"
    else:
        return sha, "none published"
    if got != expected:
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        raise MaiError(f"download of {label} is corrupt: checksum mismatch, the file was deleted",
                       [Problem(label, f"{how} {got[:16]}… of {size} bytes, expected {expected[:16]}…",
                                "run the pull again (it starts from scratch); if it keeps failing, a proxy or "
                                "mirror may be altering the file")])
    return sha, how


# --------------------------------------------------------------------------------------------- download


def _progress_watch(path: Path, total: int | None, on_progress: Callable[[int, int | None], None] | None):
    """A thread reporting the partial file's size every half second; returns a stop function."""
    if on_progress is None:
        return lambda: None
    stop = threading.Event()

    def loop():
        while not stop.wait(0.5):
            try:
                on_progress(path.stat().st_size, total)
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def finish():
        stop.set()
        t.join(timeout=2)

    return finish


def download(source, partial_dir: Path, stem: str, *, name: str, cache_file: Path, timeout: float = 10.0,
             quiet: bool = False, on_progress: Callable[[int, int | None], None] | None = None) -> Downloaded:
    """Fetch ``source`` into ``partial_dir`` (resuming an earlier partial file) and verify its checksum.

    Raises MaiError for every refusal (offline, gated, not found, network, corrupt download).
    """
    why = offline_reason()
    if why:
        raise offline_error(name, source, cache_file, why)
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import get_hf_file_metadata, http_get
    from huggingface_hub.utils import build_hf_headers

    partial_dir.mkdir(parents=True, exist_ok=True)
    commit = etag = None
    size: int | None = None
    try:
        with _hub_calls_allowed():
            if isinstance(source, HubFile):
                url = _call(hf_hub_url, repo_id=source.repo, filename=source.filename, revision=source.revision,
                            endpoint=endpoint())
                headers = _call(build_hf_headers, library_name="mai_core")
                meta = _call(get_hf_file_metadata, url=url, headers=dict(headers), timeout=timeout,
                             endpoint=endpoint())
                commit, etag, size, location = meta.commit_hash, meta.etag, meta.size, meta.location or url
                if urlparse(location).netloc != urlparse(url).netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}  # CDN: no token
                key = (etag or "noetag").strip('"')[:16]
            else:
                location, headers = source.url, {"user-agent": "mai_core"}
                key = hashlib.sha1(source.url.encode()).hexdigest()[:16]
            for stale in partial_dir.glob(f"{stem}-*.part"):
                if stale.name != f"{stem}-{key}.part":
                    stale.unlink(missing_ok=True)  # another revision's leftovers
            part = partial_dir / f"{stem}-{key}.part"
            have = part.stat().st_size if part.is_file() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            stop = _progress_watch(part, size, on_progress)
            bars = _quiet_bars(quiet)
            try:
                with open(part, "ab") as fh:
                    _call(http_get, url=location, temp_file=fh, resume_size=have, headers=dict(headers),
                          expected_size=size, displayed_filename=f"{name}: {source.filename}")
            finally:
                stop()
                bars()
    except MaiError:
        raise
    except Exception as exc:
        if "Consistency check failed" in str(exc) and "part" in locals() and size is not None \
                and part.is_file() and part.stat().st_size > size:
            part.unlink(missing_ok=True)  # longer than published: cannot be resumed
        raise explain(exc, name, source, cache_file) from None
    sha, how = _verify(part, etag, getattr(source, "sha256_prefix", None), source.label)
    suffix = Path(source.filename).suffix or ".bin"
    done = part.with_name(f"{stem}-{sha[:16]}{suffix}")
    os.replace(part, done)
    if on_progress is not None:
        on_progress(done.stat().st_size, done.stat().st_size)
    return Downloaded(done, sha, done.stat().st_size, commit, how, resumed_from=have)


def _quiet_bars(quiet: bool):
    """Silence huggingface_hub's progress bars while downloading quietly; returns the undo function."""
    if not quiet:
        return lambda: None
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    disable_progress_bars()
    return (lambda: None) if was else enable_progress_bars
