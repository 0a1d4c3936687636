#!/usr/bin/env python3
"""A loopback proxy in front of fake-gcs-server for fanout's tests (started by scripts/test-gcs).

fake-gcs-server serves Google Cloud Storage's JSON API and, of its XML API, GET, HEAD, DELETE
and listing, but not the XML writes that object_store's GCS client sends. This proxy turns
those into JSON-API calls and passes every other request through unchanged:

  PUT /BUCKET/OBJECT                      -> JSON multipart upload (ifGenerationMatch kept)
  PUT /BUCKET/OBJECT + x-goog-copy-source -> JSON copyTo (ifGenerationMatch kept)
  POST /BUCKET/OBJECT?uploads             -> an upload id (parts kept in files here)
  PUT /BUCKET/OBJECT?partNumber&uploadId  -> the part stored here, its MD5 as ETag
  POST /BUCKET/OBJECT?uploadId            -> the parts joined in the order listed, sent as one
                                             JSON media upload (streamed from a file)
  DELETE /BUCKET/OBJECT?uploadId          -> the parts dropped

and one answer of the emulator that real GCS gives otherwise: a listing of a bucket that
does not exist is fake-gcs-server's "500 no bucket named X"; GCS answers 404 NoSuchBucket.

What this means for coverage: object_store's XML write requests are checked here only as far
as this proxy reads them (the path, the body, the part order, the precondition header); real
GCS's XML multipart semantics (part size limits, ETag formats, the complete's validation) and
its signatures are not exercised. Reads, listings and deletes are the emulator's own.

Usage: test-gcs-shim.py LISTEN_PORT UPSTREAM_PORT STATE_DIR   (binds 127.0.0.1 only)
"""
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import sys
import urllib.parse
import uuid
from xml.sax.saxutils import escape

LISTEN, UPSTREAM, STATE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
UPLOADS = os.path.join(STATE, "uploads")
os.makedirs(UPLOADS, exist_ok=True)
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


def upstream(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
    conn.request(method, path, body=body, headers=headers or {})
    return conn, conn.getresponse()


class Shim(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def error_xml(self, status, code, message):
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        self.answer(status, body.encode(), [("Content-Type", "application/xml")])

    def json_failed(self, response, data):
        try:
            message = json.loads(data)["error"]["message"]
        except Exception:
            message = data.decode(errors="replace")[:200]
        code = {404: "NoSuchKey", 412: "PreconditionFailed"}.get(response.status, "Error")
        self.error_xml(response.status, code, message)

    def target(self):
        url = urllib.parse.urlsplit(self.path)
        bucket, _, name = url.path.lstrip("/").partition("/")
        return urllib.parse.unquote(bucket), urllib.parse.unquote(name), urllib.parse.parse_qs(url.query, keep_blank_values=True)

    def put_result(self, obj):
        etag = obj.get("etag") or obj.get("md5Hash") or ""
        self.answer(200, b"", [("ETag", f'"{etag}"'), ("x-goog-generation", str(obj.get("generation", "")))])

    # --- the XML writes -------------------------------------------------------------------
    def do_PUT(self):
        bucket, name, query = self.target()
        if "uploadId" in query:
            part = os.path.join(UPLOADS, os.path.basename(query["uploadId"][0]), f"{int(query['partNumber'][0]):05}")
            if not os.path.isdir(os.path.dirname(part)):
                return self.error_xml(404, "NoSuchUpload", "no such upload")
            data = self.body()
            with open(part, "wb") as f:
                f.write(data)
            return self.answer(200, b"", [("ETag", f'"{hashlib.md5(data).hexdigest()}"')])
        precondition = self.headers.get("x-goog-if-generation-match")
        copy_source = self.headers.get("x-goog-copy-source")
        if copy_source:
            self.body()
            source_bucket, _, source_name = urllib.parse.unquote(copy_source.lstrip("/")).partition("/")
            q = f"?ifGenerationMatch={precondition}" if precondition is not None else ""
            path = "/storage/v1/b/{}/o/{}/copyTo/b/{}/o/{}{}".format(
                urllib.parse.quote(source_bucket, safe=""), urllib.parse.quote(source_name, safe=""),
                urllib.parse.quote(bucket, safe=""), urllib.parse.quote(name, safe=""), q)
            conn, response = upstream("POST", path, b"", {"Content-Length": "0"})
        else:
            data = self.body()
            # The JSON multipart upload is the one fake-gcs-server checks ifGenerationMatch on.
            boundary = uuid.uuid4().hex
            meta = json.dumps({"name": name, "contentType": self.headers.get("Content-Type", "application/octet-stream")})
            payload = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{meta}\r\n"
                       f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
            q = {"uploadType": "multipart"}
            if precondition is not None:
                q["ifGenerationMatch"] = precondition
            path = f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(q)}"
            conn, response = upstream("POST", path, payload, {"Content-Type": f"multipart/related; boundary={boundary}",
                                                              "Content-Length": str(len(payload))})
        data = response.read()
        conn.close()
        if response.status != 200:
            return self.json_failed(response, data)
        self.put_result(json.loads(data))

    def do_POST(self):
        bucket, name, query = self.target()
        if "uploads" in query:
            self.body()
            upload = uuid.uuid4().hex
            os.makedirs(os.path.join(UPLOADS, upload))
            body = (f"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                    f"<Key>{escape(name)}</Key><UploadId>{upload}</UploadId></InitiateMultipartUploadResult>")
            return self.answer(200, body.encode(), [("Content-Type", "application/xml")])
        if "uploadId" in query:
            folder = os.path.join(UPLOADS, os.path.basename(query["uploadId"][0]))
            listed = self.body().decode()
            if not os.path.isdir(folder):
                return self.error_xml(404, "NoSuchUpload", "no such upload")
            numbers = [int(n) for n in re.findall(r"<PartNumber>\s*(\d+)\s*</PartNumber>", listed)]
            joined = folder + ".joined"
            with open(joined, "wb") as out:
                for number in numbers:
                    with open(os.path.join(folder, f"{number:05}"), "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            size = os.path.getsize(joined)
            q = urllib.parse.urlencode({"uploadType": "media", "name": name})
            with open(joined, "rb") as f:
                conn, response = upstream("POST", f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{q}", f,
                                          {"Content-Type": "application/octet-stream", "Content-Length": str(size)})
                data = response.read()
                conn.close()
            shutil.rmtree(folder, ignore_errors=True)
            os.remove(joined)
            if response.status != 200:
                return self.json_failed(response, data)
            obj = json.loads(data)
            etag = obj.get("etag") or obj.get("md5Hash") or ""
            body = (f"<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
                    f"<Key>{escape(name)}</Key><ETag>\"{escape(etag)}\"</ETag></CompleteMultipartUploadResult>")
            return self.answer(200, body.encode(), [("Content-Type", "application/xml"),
                                                    ("x-goog-generation", str(obj.get("generation", "")))])
        self.forward()

    def do_DELETE(self):
        _, _, query = self.target()
        if "uploadId" in query:
            self.body()
            shutil.rmtree(os.path.join(UPLOADS, os.path.basename(query["uploadId"][0])), ignore_errors=True)
            return self.answer(204)
        self.forward()

    # --- everything else, unchanged ---------------------------------------------------------
    def do_GET(self):
        self.forward()

    def do_HEAD(self):
        self.forward()

    def forward(self):
        data = self.body() if self.command in ("POST", "PUT", "PATCH") else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if data is not None:
            headers["Content-Length"] = str(len(data))
        conn, response = upstream(self.command, self.path, data, headers)
        try:
            if response.status == 500 and self.command in ("GET", "HEAD"):
                text = response.read().decode(errors="replace")
                missing = re.search(r"no bucket named (\S+?)<", text)
                if missing:
                    return self.error_xml(404, "NoSuchBucket", f"The specified bucket does not exist: {missing.group(1)}")
                return self.answer(500, text.encode(), [("Content-Type", "application/xml")])
            length = response.getheader("Content-Length")
            if length is None and self.command != "HEAD":
                body = response.read()
                length = str(len(body))
            else:
                body = None
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command == "HEAD":
                return
            if body is not None:
                self.wfile.write(body)
                return
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                self.wfile.write(chunk)
        finally:
            conn.close()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    Server(("127.0.0.1", LISTEN), Shim).serve_forever()
