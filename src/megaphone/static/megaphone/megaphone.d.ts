// Type declarations of megaphone.js, the client of Megaphone's JSON protocol (docs/protocol.md,
// docs/clients.md). Checked by `tsc --noEmit` against tests/js/types/ (tests/unit/test_js_package.py).

/** What the client does after the server closes with a code (docs/clients.md, "Close codes"). */
export type CloseAction = "reconnect" | "refuse" | "slow_down" | "reauthenticate";

export interface CloseCodeEntry {
  readonly name: string;
  readonly action: CloseAction;
}

/** The close-code table: code -> {name, action}, the same as docs/protocol.md's. */
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeEntry>>;

/** The action of CLOSE_CODES for `code`: "reconnect" for a code the table does not name. */
export declare function closeAction(code: number): CloseAction;

export type ConnectionState = "connecting" | "open" | "closed";

/** Any JSON value: what `publish` sends and `onMessage` receives as `data`. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A position in a topic: the last offset seen, in that epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The answer to a publish. */
export interface Published extends Position {
  topic: string;
}

/** The answer to a subscribe; `recovered`/`missed` only when `since` was sent. */
export interface SubscribeResult extends Published {
  recovered?: boolean;
  missed?: number;
  /** A server subscription (the server subscribed the connection at connect). */
  server?: boolean;
}

/** An `unsubscribed` frame: the server ended the subscription. `code`: "revoked",
 * "server_unsubscribed", "insufficient_state" (resubscribed by the client) or the project's own. */
export interface UnsubscribedFrame extends Published {
  type: "unsubscribed";
  code: string;
}

/** A `message` frame. With `binary`, `data` is base64 (onMessage is given the bytes). */
export interface MessageFrame<T = JsonValue> extends Published {
  type: "message";
  data: T;
  binary?: true;
}

export interface PresenceEntry {
  client: string;
  user: string | null;
  info: JsonValue | null;
}

export interface PresenceFrame extends PresenceEntry {
  type: "join" | "leave";
  topic: string;
}

export interface HistoryResult<T = JsonValue> extends Published {
  complete: boolean;
  messages: MessageFrame<T>[];
}

export interface PresenceResult {
  topic: string;
  count: number;
  clients: PresenceEntry[];
}

export interface HistoryOptions {
  since?: number;
  limit?: number;
  epoch?: string;
}

/** Callbacks and options of `subscribe`. */
export interface SubscribeOptions<T = JsonValue> {
  onMessage?: (data: T | Uint8Array, message: MessageFrame<T>) => void;
  onSubscribed?: (result: SubscribeResult) => void;
  /** Messages were missed and cannot be sent (`recovered: false`): reload your state. */
  onRecoveryFailed?: (result: SubscribeResult) => void;
  onJoin?: (entry: PresenceFrame) => void;
  onLeave?: (entry: PresenceFrame) => void;
  /** The subscription ended: the server refused it. */
  onError?: (error: MegaphoneError) => void;
  /** The server ended the subscription (revoked, or the project's reason); it is over. */
  onUnsubscribed?: (frame: UnsubscribedFrame) => void;
  /** This client's presence info (at most 1 KiB of JSON). */
  info?: JsonValue;
  /** The position to recover from. */
  since?: Position;
}

export interface MegaphoneOptions {
  /** First reconnection delay, ms (500). */
  minDelay?: number;
  /** Longest reconnection delay, ms (10000). */
  maxDelay?: number;
  /** How long a connection must stay open before the backoff starts again, ms (15000). */
  stablePeriod?: number;
  /** How long a request other than publish waits for its answer once sent, ms (10000). */
  requestTimeout?: number;
  /** How long a publish may wait, from the call, across reconnects, ms (10000). */
  publishTimeout?: number;
  /** Connect at once (true). */
  autoConnect?: boolean;
  /** The WebSocket class (globalThis.WebSocket). */
  WebSocket?: { new (url: string): WebSocket };
  /** Fall back to the HTTP transport when a WebSocket never opens (true where EventSource exists). */
  httpFallback?: boolean;
  /** How long a socket may take to open before it is given up, ms (5000). */
  openTimeout?: number;
  /** Over HTTP, how long before a reconnect tries WebSocket again, ms (60000). */
  websocketRetry?: number;
  /** The class of the HTTP transport (HttpSocket); tests pass a fake one. */
  HttpSocket?: { new (url: string): WebSocketLike };
}

/** What the client needs of a socket: a WebSocket, or the HTTP transport. */
export interface WebSocketLike {
  send(text: string): void;
  close(code?: number): void;
  onopen: ((event: object) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
}

/** The transport of a connection. */
export type Transport = "websocket" | "http";

/** The HTTP transport: an event stream of /sse/connect/ down, POSTs up. */
export declare class HttpSocket implements WebSocketLike {
  constructor(url: string);
  send(text: string): void;
  close(code?: number): void;
  onopen: ((event: object) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
}

/** A path, a ws:/wss: URL, or a function giving one before every connection attempt. */
export type MegaphoneUrl = string | (() => string | Promise<string>);

export declare class MegaphoneError extends Error {
  constructor(code: string | number, message?: string);
  /** An error code ("forbidden", "rate_limited"...), a close code (1009, 4429...),
   * "timeout" or "disconnected". */
  code: string | number;
}

export declare class Subscription<T = JsonValue> {
  readonly client: Megaphone;
  readonly topic: string;
  /** The position of the last message delivered (null before the first). */
  offset: number | null;
  epoch: string | null;
  active: boolean;
  /** Subscribed by the server at connect (a `subscribed` frame), recovered by it on reconnect. */
  server: boolean;
  presence(): Promise<PresenceResult>;
  history(options?: HistoryOptions): Promise<HistoryResult<T>>;
  unsubscribe(): Promise<void>;
}

export interface StateEventDetail {
  state: ConnectionState;
  code?: number;
  transport: Transport;
}

export interface MegaphoneEventMap {
  state: CustomEvent<StateEventDetail>;
  connected: CustomEvent<{ client: string }>;
  error: CustomEvent<{ code: string; message: string }>;
  subscribed: CustomEvent<{ subscription: Subscription; result: SubscribeResult }>;
}

export declare class Megaphone extends EventTarget {
  constructor(url?: MegaphoneUrl, options?: MegaphoneOptions);
  url: MegaphoneUrl;
  readonly state: ConnectionState;
  /** The transport of the current (or next) connection. */
  readonly transport: Transport;
  /** The connection id of the `connected` frame; null while not open. */
  readonly clientId: string | null;
  /** The delay (ms) before the coming reconnection; null when none comes. */
  readonly nextRetryDelay: number | null;
  minDelay: number;
  maxDelay: number;
  stablePeriod: number;
  requestTimeout: number;
  publishTimeout: number;
  static absoluteUrl(url: string): string;
  connect(): Promise<void>;
  /** Close for good; pending requests are rejected now. */
  disconnect(): void;
  subscribe<T = JsonValue>(topic: string, options?: SubscribeOptions<T>): Subscription<T>;
  publish(
    topic: string,
    data: JsonValue | ArrayBuffer | ArrayBufferView,
    options?: { msgId?: string },
  ): Promise<Published>;
  history<T = JsonValue>(topic: string, options?: HistoryOptions): Promise<HistoryResult<T>>;
  presence(topic: string): Promise<PresenceResult>;
  ping(): Promise<Record<string, never>>;
  addEventListener<K extends keyof MegaphoneEventMap>(
    type: K,
    listener: (event: MegaphoneEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof MegaphoneEventMap>(
    type: K,
    listener: (event: MegaphoneEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export default Megaphone;
