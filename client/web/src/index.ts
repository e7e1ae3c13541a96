// mdsync's web SDK: the seeds' Web API (connection, message factory, event
// handlers, multi-device operations) on docs/protocol.md, and the REST API.

import { Connection } from "./connection.js";
import { message } from "./message.js";

export { Connection, Subprotocol, MaxFrameBytes, wsUrlOf, restUrlOf } from "./connection.js";
export type { ConnectionOptions, OpResult, DeviceAuth, WebSocketCtor } from "./connection.js";
export { message, newId } from "./message.js";
export type { Message, MessageOptions } from "./message.js";
export { RestClient } from "./rest.js";
export type { Credential, RestOptions } from "./rest.js";
export { Code, MdsyncError, codeOf, isKickCode } from "./errors.js";
export type { CodeValue } from "./errors.js";
export type * from "./types.js";

/** The seeds' entry point: new mdsync.connection({...}) as new WebIM.connection({...}). */
export const connection = Connection;

const mdsync = { connection: Connection, Connection, message };
export default mdsync;
