#!/usr/bin/env python3
"""One upload with tuspy (the tus project's Python client), in chunks, for
tests/tus_clients.rs. Prints one JSON object on stdout: the upload URL, the
offset this run started from, and where it ended.

    python3 tests/clients/tuspy-upload.py ENDPOINT FILE --chunk-size BYTES
        [--storage DIR] [--stop-after BYTES] [--resume] [--checksum]
        [--header 'Name: value']...

--storage DIR      keep the upload URL in DIR/tuspy-urls.json (tuspy's
                   FileStorage, keyed by the file's fingerprint)
--stop-after N     stop once the server holds N bytes (tuspy's stop_at: the
                   last chunk is cut to end there) and exit, as an
                   application pausing an upload would
--resume           the URL must come from --storage (an error if none is
                   stored), and the upload goes on from the server's offset
                   (tuspy asks with HEAD)
--checksum         an Upload-Checksum (sha1) with every chunk
--header           sent with every request, e.g. a signed X-Progress-ID

tuspy is not a dependency of this repository: scripts/install-clients
installs the pinned version in the virtual environment target/tus-venv, and
this script is run with that environment's python3.
"""

import argparse
import json
import os
import sys


def fail(message, **extra):
    print(json.dumps({"error": message, **extra}), flush=True)
    sys.exit(1)


try:
    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed
    from tusclient.storage import filestorage
except ImportError as error:
    fail(f"tuspy is not installed for {sys.executable} ({error}): run scripts/install-clients")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("file")
    parser.add_argument("--chunk-size", type=int, required=True)
    parser.add_argument("--storage")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checksum", action="store_true")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    if (args.resume or args.stop_after is not None) and not args.storage:
        fail("--resume and --stop-after need --storage: the URL must outlive the process")

    headers = {}
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            fail(f"--header wants 'Name: value', not {header!r}")
        headers[name.strip()] = value.strip()

    storage = None
    if args.storage:
        storage = filestorage.FileStorage(os.path.join(args.storage, "tuspy-urls.json"))

    client = tus_client.TusClient(args.endpoint, headers=headers)
    try:
        # With store_url, tuspy looks the file's URL up in the storage and,
        # when it finds one, asks the server for its offset (HEAD) right here.
        uploader = client.uploader(
            file_path=args.file,
            chunk_size=args.chunk_size,
            metadata={"filename": os.path.basename(args.file), "filetype": "application/octet-stream"},
            store_url=storage is not None,
            url_storage=storage,
            upload_checksum=args.checksum,
        )
        resumed_from = uploader.offset if uploader.url else None
        if args.resume and uploader.url is None:
            fail(f"--resume: no upload of {args.file} is stored in {args.storage}")
        chunks = 0
        size = uploader.get_file_size()
        stop = args.stop_after if args.stop_after is not None else size
        # upload() in the loop it runs itself, chunk by chunk, so that the
        # number of PATCHes can be reported.
        if not uploader.url:
            uploader.set_url(uploader.create_url())
            uploader.offset = 0
        uploader.stop_at = stop
        while uploader.offset < stop:
            uploader.upload_chunk()
            chunks += 1
    except (TusCommunicationError, TusUploadFailed) as error:
        fail(
            f"tuspy: {error}",
            status=getattr(error, "status_code", None),
            response=(getattr(error, "response_content", None) or b"").decode("utf-8", "replace"),
        )
    finally:
        if storage is not None:
            storage.close()
    print(
        json.dumps(
            {
                "url": uploader.url,
                "size": size,
                "resumed_from": resumed_from,
                "offset": uploader.offset,
                "chunks": chunks,
                "stopped": uploader.offset < size,
            }
        ),
        flush=True,
    )


main()
