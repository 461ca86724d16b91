"""A headless Chromium driven through the DevTools protocol over pipes (no websocket).

``chromium --remote-debugging-pipe`` reads protocol commands from fd 3 and
writes replies and events to fd 4, each a JSON message ended by a NUL byte;
that is all the client below needs (Puppeteer's ``pipe: true`` transport).
It opens a page, waits for its load event, evaluates expressions, takes a
screenshot and collects console errors, uncaught exceptions and failed
loads that the browser logs (Log.entryAdded at level error).
"""
import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    """Path of a Chromium/Chrome executable, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless browser; use as a context manager."""

    def __init__(self, executable, profile_dir, width=1280, height=900, timeout=60.0):
        self.timeout = timeout
        self.width, self.height = width, height
        cmd_read, self._cmd_write = os.pipe()      # we write, the browser reads fd 3
        self._out_read, out_write = os.pipe()      # the browser writes fd 4, we read
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--user-data-dir=%s" % profile_dir,
                "--window-size=%d,%d" % (width, height), "about:blank"]
        # the shell puts the pipe ends on fds 3 and 4, where the browser expects them (the
        # originals stay open too: one of them may already be fd 3 or 4)
        script = 'exec "$@" 3<&%d 4>&%d' % (cmd_read, out_write)
        os.makedirs(profile_dir, exist_ok=True)
        self._log = open(os.path.join(profile_dir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(["bash", "-c", script, "bash"] + args,
                                     pass_fds=(cmd_read, out_write), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        os.close(cmd_read)
        os.close(out_write)
        self._messages = queue.Queue()
        self._events = []
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = None

    # -- transport ------------------------------------------------------------
    def _read(self):
        buf = b""
        with os.fdopen(self._out_read, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    self._messages.put(None)
                    return
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    self._messages.put(json.loads(raw.decode("utf-8")))

    def _pump(self, until, deadline):
        """Read messages (keeping events) until ``until(message)`` is true; returns it."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from the browser within %.0f s" % self.timeout)
            try:
                msg = self._messages.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                raise BrowserError("the browser exited (see chromium.log)")
            if "method" in msg:
                self._events.append(msg)
            if until(msg):
                return msg

    def call(self, method, params=None, session=True):
        """Send one command and return its result (BrowserError on a protocol error)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_write, json.dumps(msg).encode("utf-8") + b"\0")
        reply = self._pump(lambda m: m.get("id") == msg["id"],
                           time.monotonic() + self.timeout)
        if "error" in reply:
            raise BrowserError("%s: %s" % (method, reply["error"]))
        return reply.get("result", {})

    def wait_event(self, method):
        """Wait for an event of this page's session (or one already received)."""
        for e in self._events:
            if e["method"] == method and e.get("sessionId") == self.session:
                return e
        return self._pump(lambda m: m.get("method") == method and
                          m.get("sessionId") == self.session, time.monotonic() + self.timeout)

    # -- a page ---------------------------------------------------------------
    def open(self, url):
        """Open ``url`` in a new page and wait for its load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(domain + ".enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        self._events = [e for e in self._events if e["method"] != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression):
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError("evaluation failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path):
        """Write a PNG of the viewport."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def errors(self):
        """Console errors, uncaught exceptions and error log entries seen so far (text)."""
        out = []
        for e in self._events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append("exception: %s" % p.get("exceptionDetails", {}).get("text"))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error",
                                                                                   "assert"):
                out.append("console.%s: %s" % (p["type"], [a.get("value") for a in
                                                           p.get("args", [])]))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append("log: %s %s" % (entry.get("text"), entry.get("url", "")))
        return out

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", session=False)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self._cmd_write)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
