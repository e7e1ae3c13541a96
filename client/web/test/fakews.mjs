// A fake WebSocket for the SDK's unit tests: the test plays the server
// (push a frame, read what the SDK sent), FakeWS.all holds every socket
// opened, FakeWS.onSend sees each frame sent.
export class FakeWS {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.listeners = { close: [] };
    FakeWS.all.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }
  send(s) {
    this.sent.push(JSON.parse(s));
    FakeWS.onSend?.(this, JSON.parse(s));
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => {
      const ev = { code, reason: "" };
      this.onclose?.(ev);
      for (const fn of this.listeners.close) fn(ev);
    });
  }
  /** The server sends a frame. */
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  frames(type) {
    return this.sent.filter((f) => f.type === type);
  }
}
