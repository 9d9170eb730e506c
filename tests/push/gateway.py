#!/usr/bin/env python3
"""A processor's tokenization endpoint for tests/push.rs, in its own process: HTTPS on
loopback that demands a client certificate issued by its client CA (ssl.CERT_REQUIRED),
checks the Tonewall-Signature (HMAC-SHA256 of "t.body", at most 300 s old), answers the
same Idempotency-Key with the same reference, and appends each request it accepted to a
JSON-lines log.

usage: gateway.py PORT CERT KEY CLIENT_CA SECRET_HEX LOG
"""
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import time

port, cert, key, client_ca, secret_hex, log = sys.argv[1:7]
secret = bytes.fromhex(secret_hex)
references = {}


class Gateway(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        parts = dict(p.split("=", 1) for p in self.headers.get("Tonewall-Signature", "").split(",") if "=" in p)
        t = parts.get("t", "0")
        expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = t.isdigit() and abs(time.time() - int(t)) <= 300
        if not (fresh and hmac.compare_digest(expected, parts.get("v1", ""))):
            self.send_response(401)
            self.end_headers()
            return
        idempotency_key = self.headers.get("Idempotency-Key", "")
        reference = references.setdefault(idempotency_key, f"gw-{len(references) + 1}")
        subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
        with open(log, "a") as f:
            f.write(json.dumps({"key": idempotency_key, "client": subject.get("commonName"), "body": json.loads(body)}) + "\n")
        out = json.dumps({"reference": reference}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations(client_ca)
server = http.server.HTTPServer(("127.0.0.1", int(port)), Gateway)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
