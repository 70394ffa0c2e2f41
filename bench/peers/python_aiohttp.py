"""Python baseline peer for `lbx-relay bench --url`: aiohttp server that decrypts the
json-data-iv envelope (raw key), renders a small JSON body, puts it on an in-memory queue and
forwards it to the bench sink. No durability: this is the "a small script would do" baseline.

Usage: SECRET=... SINK_URL=http://127.0.0.1:PORT/sink python3 python_aiohttp.py 127.0.0.1:PORT
"""
import asyncio
import base64
import json
import os
import sys

from aiohttp import ClientSession, web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = os.environ["SECRET"].encode()[:32].ljust(32, b"\0")
SINK_URL = os.environ.get("SINK_URL")
WORKERS = int(os.environ.get("WORKERS", "64"))
queue: "asyncio.Queue[bytes]" = asyncio.Queue()


def decrypt(body: dict) -> dict:
    ct = base64.b64decode(body["data"])
    iv = base64.b64decode(body["iv"])
    decryptor = Cipher(algorithms.AES(KEY), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ct) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return json.loads(unpadder.update(padded) + unpadder.finalize())


async def hook(request: web.Request) -> web.Response:
    try:
        event = decrypt(await request.json())
    except Exception:  # same answer as the relay for undecryptable bodies
        return web.json_response({"status": "ok"})
    out = json.dumps({"n": event.get("n"), "event": event.get("event"),
                      "email": event.get("data", {}).get("contact", {}).get("email")})
    queue.put_nowait(out.encode())
    return web.json_response({"status": "ok"})


async def forward(session: ClientSession) -> None:
    while True:
        body = await queue.get()
        try:
            async with session.post(SINK_URL, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
        except Exception:
            await queue.put(body)


async def start_forwarders(app: web.Application) -> None:
    if SINK_URL:
        app["session"] = ClientSession()
        app["forwarders"] = [asyncio.create_task(forward(app["session"])) for _ in range(WORKERS)]


async def stop_forwarders(app: web.Application) -> None:
    for task in app.get("forwarders", []):
        task.cancel()
    if "session" in app:
        await app["session"].close()


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/hooks/{source}", hook)
    app.on_startup.append(start_forwarders)
    app.on_cleanup.append(stop_forwarders)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
