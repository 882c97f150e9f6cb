"""Open a page in a real headless Chromium (Debian's) and report what happened.

Drives the browser through the Chrome DevTools protocol over a websocket on
127.0.0.1 (aiohttp's client): records failed network requests, HTTP errors,
console errors and script exceptions, reads the state of every <img>, and takes
a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    screenshot: bytes = b""
    viewport: bytes = b""
    images: list[dict[str, Any]] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    title: str = ""


async def _drive(ws_url: str, url: str, width: int, height: int, timeout: float) -> PageResult:
    import aiohttp

    result = PageResult()
    ids = itertools.count(1)
    loaded = asyncio.Event()
    futures: dict[int, asyncio.Future] = {}

    def on_event(msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(p["request"]["url"][:80])
        elif method == "Network.loadingFailed":
            result.failed_requests.append(f"{p.get('type')}: {p.get('errorText')}")
        elif method == "Network.responseReceived" and p["response"].get("status", 200) >= 400:
            result.failed_requests.append(f"HTTP {p['response']['status']} {p['response']['url']}")
        elif method == "Runtime.exceptionThrown":
            result.errors.append(str(p["exceptionDetails"].get("text")))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            result.errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Page.loadEventFired":
            loaded.set()

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, max_msg_size=0) as ws,
    ):

        async def reader() -> None:
            async for message in ws:
                msg = json.loads(message.data)
                if "id" in msg and msg["id"] in futures:
                    futures.pop(msg["id"]).set_result(msg)
                elif "method" in msg:
                    on_event(msg)

        reading = asyncio.create_task(reader())

        async def call(method: str, params: dict | None = None, session: str | None = None) -> Any:
            i = next(ids)
            futures[i] = asyncio.get_running_loop().create_future()
            msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            await ws.send_str(json.dumps(msg))
            reply = await asyncio.wait_for(futures[i], timeout)
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply["result"]

        target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))[
            "sessionId"
        ]
        for domain in ("Network", "Page", "Runtime", "Log"):
            await call(f"{domain}.enable", session=session)
        await call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        nav = await call("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            result.failed_requests.append(f"navigation: {nav['errorText']}")
        await asyncio.wait_for(loaded.wait(), timeout)
        probe = (
            "JSON.stringify({title: document.title, images: Array.from(document.images).map("
            "i => ({src: i.getAttribute('src').slice(0, 40), complete: i.complete,"
            " width: i.naturalWidth, height: i.naturalHeight}))})"
        )
        value = await call(
            "Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session
        )
        state = json.loads(value["result"]["value"])
        result.title, result.images = state["title"], state["images"]
        shot = await call("Page.captureScreenshot", {"format": "png"}, session=session)
        result.viewport = _b64(shot["data"])
        shot = await call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            session=session,
        )
        result.screenshot = _b64(shot["data"])
        await call("Target.closeTarget", {"targetId": target})
        reading.cancel()
    return result


def _b64(data: str) -> bytes:
    import base64

    return base64.b64decode(data)


def open_page(
    url: str, profile_dir: Path, width: int = 1280, height: int = 900, timeout: float = 60
) -> PageResult:
    """Load ``url`` in a fresh headless Chromium (own profile dir) and inspect it."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (requirements/apt.txt lists it)")
    profile_dir.mkdir(parents=True, exist_ok=True)
    log = (profile_dir / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "chromium did not start: " + (profile_dir / "chromium.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        ws_url = f"ws://127.0.0.1:{port}{path}"
        return asyncio.run(_drive(ws_url, url, width, height, timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
