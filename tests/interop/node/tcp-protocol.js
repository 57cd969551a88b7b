'use strict';
/**
 * A ComProtocol that carries Tap APDUs over a plain TCP socket, as a Wi-Fi Tap does.
 *
 * IoTize's own Node TCP transport is not published on npm, so the interop harness brings its own,
 * built on the SDK's QueueComProtocol. That base class serialises requests and, for each one, calls
 * write(request) and then read() under the send timeout (options.send.timeout); it also drives the
 * connection state around our _connect() and _disconnect() observables.
 *
 * Framing: one raw APDU per write; the Tap answers with `status | data | 90 00` and no length prefix.
 * A response is taken as complete as soon as the bytes received since the last write are at least 3
 * long and end in 90 00 (the status word every Tap answer carries). Anything else (a short frame, another
 * status word) is delivered once the socket has been quiet for `idleMs`, so the SDK sees it and reports
 * an unexpected APDU status instead of timing out. A response split by TCP exactly after a 90 00 pair
 * inside its data would be cut early; the emulator, like a real Tap, writes each response in one segment.
 * Bytes arriving while no request is outstanding (a late answer to a timed-out request) are dropped
 * at the next write so they cannot be mistaken for the next response.
 */
const net = require('net');
const { Observable } = require('rxjs');
const { share } = require('rxjs/operators');
const { QueueComProtocol } = require('@iotize/tap/protocol/core');
const { ConnectionState } = require('@iotize/tap/protocol/api');

const APDU_STATUS_OK = [0x90, 0x00];
const DEFAULT_IDLE_MS = 50;
const DISCONNECT_GRACE_MS = 250;

function endsWithStatusOk(bytes) {
  const n = bytes.length;
  return n >= 3 && bytes[n - 2] === APDU_STATUS_OK[0] && bytes[n - 1] === APDU_STATUS_OK[1];
}

class TcpProtocol extends QueueComProtocol {
  /** @param {{host: string, port: number, idleMs?: number}} params */
  constructor(params) {
    super();
    this.params = { idleMs: DEFAULT_IDLE_MS, ...params };
    this.socket = undefined;
    this._received = Buffer.alloc(0);
    this._pendingRead = undefined;
    this._idleTimer = undefined;
  }

  _connect() {
    // share(): QueueComProtocol subscribes to this observable and so does the caller of connect().
    return new Observable((subscriber) => {
      let connected = false;
      const socket = net.createConnection({ host: this.params.host, port: this.params.port });
      socket.setNoDelay(true);
      socket.on('connect', () => {
        connected = true;
        this.socket = socket;
        subscriber.next(true);
        subscriber.complete();
      });
      socket.on('data', (chunk) => {
        if (this.socket === socket) this._onData(chunk);
      });
      // A pending read belongs to the current socket; events of a socket already replaced are ignored.
      socket.on('error', (err) => {
        if (!connected) subscriber.error(err);
        else if (this.socket === socket) this._failPendingRead(err);
      });
      socket.on('close', () => {
        if (this.socket !== socket) return;
        this.socket = undefined;
        this._failPendingRead(new Error('Connection closed by the Tap'));
        this.setConnectionState(ConnectionState.DISCONNECTED);
      });
      // Runs on completion too: only a socket that never connected (connect timeout) is torn down.
      return () => {
        if (!connected) socket.destroy();
      };
    }).pipe(share());
  }

  _disconnect() {
    // share(), as for _connect: the base class and the caller both subscribe.
    return new Observable((subscriber) => {
      const socket = this.socket;
      this.socket = undefined;
      this._failPendingRead(new Error('Disconnected by the client'));
      if (!socket || socket.destroyed) {
        subscriber.next(true);
        subscriber.complete();
        return undefined;
      }
      // Half-close politely, then force it if the Tap does not close its side.
      const forceClose = setTimeout(() => socket.destroy(), DISCONNECT_GRACE_MS);
      socket.once('close', () => {
        clearTimeout(forceClose);
        subscriber.next(true);
        subscriber.complete();
      });
      socket.end();
    }).pipe(share());
  }

  write(data) {
    const socket = this.socket;
    if (!socket || socket.destroyed) return Promise.reject(new Error('TCP socket is not connected'));
    this._received = Buffer.alloc(0);
    this._pendingRead = undefined;
    this._clearIdleTimer();
    return new Promise((resolve, reject) => {
      socket.write(Buffer.from(data), (err) => (err ? reject(err) : resolve()));
    });
  }

  read() {
    return new Promise((resolve, reject) => {
      this._pendingRead = { resolve, reject };
      // Bytes already here and no idle timer running: complete, or already quiet for idleMs.
      if (this._received.length > 0 && !this._idleTimer) this._deliver();
    });
  }

  _onData(chunk) {
    this._received = Buffer.concat([this._received, chunk]);
    this._clearIdleTimer();
    if (endsWithStatusOk(this._received)) {
      this._deliver();
    } else {
      this._idleTimer = setTimeout(() => {
        this._idleTimer = undefined;
        this._deliver();
      }, this.params.idleMs);
    }
  }

  _deliver() {
    const pending = this._pendingRead;
    if (!pending || this._received.length === 0) return;
    this._clearIdleTimer();
    this._pendingRead = undefined;
    const response = new Uint8Array(this._received);
    this._received = Buffer.alloc(0);
    pending.resolve(response);
  }

  _failPendingRead(err) {
    this._clearIdleTimer();
    const pending = this._pendingRead;
    this._pendingRead = undefined;
    if (pending) pending.reject(err);
  }

  _clearIdleTimer() {
    if (this._idleTimer) clearTimeout(this._idleTimer);
    this._idleTimer = undefined;
  }
}

module.exports = { TcpProtocol };
