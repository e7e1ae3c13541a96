// The seeds' message factory: message.create({type, msg, to, chatType}).

import type { ChatType } from "./types.js";

/** Options of message.create. */
export interface MessageOptions {
  type: "txt" | "custom";
  /** txt: the text. custom: the body as a string (e.g. JSON). */
  msg: string;
  /** A user, group, chat room or thread ID, or one of the user's own login IDs (singleChat). */
  to: string;
  chatType: ChatType;
  /** Content type of a custom message; default application/octet-stream. */
  contentType?: string;
  /** Thread messages: the thread's group. */
  groupId?: string;
  /** A client message ID; retries with the same one create nothing new. Generated when absent. */
  id?: string;
}

/** A message ready for send(). */
export interface Message {
  readonly id: string;
  readonly type: "txt" | "custom";
  readonly msg: string;
  readonly to: string;
  readonly chatType: ChatType;
  readonly contentType: string;
  readonly groupId: string;
}

/** newId returns 24 random hex digits. */
export function newId(): string {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const chatTypes: readonly ChatType[] = ["singleChat", "groupChat", "chatRoom", "chatThread"];

/** create builds a message; it validates the options and throws a TypeError for bad ones. */
function create(o: MessageOptions): Message {
  if (o.type !== "txt" && o.type !== "custom") throw new TypeError(`message.create: unknown type ${String(o.type)}`);
  if (!chatTypes.includes(o.chatType)) throw new TypeError(`message.create: unknown chatType ${String(o.chatType)}`);
  if (typeof o.to !== "string" || o.to === "") throw new TypeError("message.create: to is required");
  if (typeof o.msg !== "string") throw new TypeError("message.create: msg must be a string");
  return Object.freeze({
    id: o.id ?? newId(),
    type: o.type,
    msg: o.msg,
    to: o.to,
    chatType: o.chatType,
    contentType: o.type === "txt" ? "text/plain" : (o.contentType ?? "application/octet-stream"),
    groupId: o.groupId ?? "",
  });
}

/** The message factory (WebIM.message in the seeds). */
export const message = { create } as const;

export function utf8ToBase64(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function base64ToUtf8(s: string): string {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}
