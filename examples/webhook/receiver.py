"""A webhook endpoint for the example: prints each request's signature check and events."""
import base64, hashlib, hmac, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

secret = base64.b64decode(os.environ["SHOP_WEBHOOK_SECRET"].removeprefix("whsec_"))

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        signed = f'{self.headers["webhook-id"]}.{self.headers["webhook-timestamp"]}.'.encode() + body
        expected = "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
        ok = hmac.compare_digest(expected, self.headers["webhook-signature"])
        for event in json.loads(body):
            print(f'signature {"ok" if ok else "BAD"}  {event["type"]}  {event["subject"]}  {json.dumps(event["data"])}', flush=True)
        self.send_response(200 if ok else 401)
        self.end_headers()

    def do_HEAD(self):
        self.send_response(405)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
