"""Reading ``POST /v1/files``'s multipart body as it streams in, into a temporary file.

FastAPI parses a form before any dependency runs, so with ``UploadFile`` parameters a caller
without a key could send the whole body (512 MiB) before hearing its 401, and the handler then
read the file into memory. The upload endpoint therefore declares no form parameters: it
authenticates from the headers first, then calls ``receive_upload``, which feeds the body to
python-multipart chunk by chunk and writes the ``file`` part to a temporary file beside the blob
store (so placing it is a rename), hashing it on the way. The file's size limit is enforced while
it streams: the first chunk past ``max_file_bytes`` ends the read with a 413, and the temporary
file is removed. Other parts are small text fields, kept in memory up to ``MAX_FIELD_BYTES``.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.core.errors import InvalidRequest, PayloadTooLarge

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024  # every text field together (purpose is a few bytes)


@dataclass(frozen=True)
class ReceivedUpload:
    """The upload on disk (a temporary file the caller removes) and the form's fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    purpose: str | None


def _decode(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return value.decode("latin-1")


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None  # the upload's part only
    dropped: bool = False  # a file under another name: read past, not kept
    disposition: bytes = b""
    data: bytearray = field(default_factory=bytearray)


class _FormReader:
    """python-multipart callbacks: file bytes are queued for the writer, fields kept."""

    def __init__(self, charset: str, max_file_bytes: int) -> None:
        self.charset = charset
        self.max_file_bytes = max_file_bytes
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.fields: dict[str, str] = {}
        self.field_bytes = 0
        self.filename: str | None = None  # set once the file part begins
        self.size = 0
        self.pending: list[bytes] = []  # file bytes the writer has not written yet

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.part.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise InvalidRequest('The Content-Disposition header field "name" must be provided.')
        self.part.name = _decode(options[b"name"], self.charset)
        if b"filename" not in options:
            return
        if self.part.name != FILE_FIELD:
            self.part.dropped = True
            return
        if self.filename is not None:
            raise InvalidRequest(
                "Invalid upload: send one 'file' part per request.", param=FILE_FIELD
            )
        self.part.filename = self.filename = _decode(options[b"filename"], self.charset)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.filename is not None:
            self.size += len(chunk)
            if self.size > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"File is too large: more than the limit of {self.max_file_bytes} bytes "
                    "(SAFEPATCH_MAX_UPLOAD_BYTES); it was not read further.",
                    param=FILE_FIELD,
                )
            self.pending.append(chunk)
        elif not self.part.dropped:
            self.field_bytes += len(chunk)
            if self.field_bytes > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"Invalid upload: the form's fields take over {MAX_FIELD_BYTES} bytes.",
                    param=self.part.name or None,
                )
            self.part.data.extend(chunk)

    def on_part_end(self) -> None:
        if self.part.filename is None and not self.part.dropped and self.part.name:
            self.fields[self.part.name] = _decode(bytes(self.part.data), self.charset)


async def receive_upload(
    request: Request, *, spool_dir: Path, max_file_bytes: int
) -> ReceivedUpload:
    """Stream the multipart body's ``file`` part into a temporary file under ``spool_dir``;
    400 for a body that is not multipart or has no file, 413 past ``max_file_bytes``."""
    content_type = request.headers.get("content-type", "")
    _, params = parse_options_header(content_type)
    if b"boundary" not in params:
        if content_type.lower().startswith("multipart/"):
            raise InvalidRequest("Missing boundary in multipart.")
        raise InvalidRequest(  # a urlencoded form cannot carry a file
            f"Missing required parameter: '{FILE_FIELD}'.",
            param=FILE_FIELD,
            code="missing_required_parameter",
        )
    charset = _decode(params.get(b"charset", b"utf-8"), "latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    reader = _FormReader(charset, max_file_bytes)
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": reader.on_part_begin,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
        },
    )
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix=".upload-")
    path = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.stream():
                parser.write(chunk)
                if reader.pending:
                    pending, reader.pending = reader.pending, []
                    for piece in pending:
                        digest.update(piece)
                    # Off the event loop: a slow disk must not stall other requests.
                    await run_in_threadpool(_write_all, handle, pending)
            parser.finalize()
    except FormParserError as error:
        path.unlink(missing_ok=True)
        raise InvalidRequest("Invalid multipart data.") from error
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if reader.filename is None:
        path.unlink(missing_ok=True)
        raise InvalidRequest(
            f"Missing required parameter: '{FILE_FIELD}'.",
            param=FILE_FIELD,
            code="missing_required_parameter",
        )
    return ReceivedUpload(
        path=path,
        filename=reader.filename,
        size=reader.size,
        sha256=digest.hexdigest(),
        purpose=reader.fields.get("purpose"),
    )


def _write_all(handle: BinaryIO, pieces: list[bytes]) -> None:
    for piece in pieces:
        handle.write(piece)
