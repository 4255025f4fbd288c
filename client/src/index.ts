/**
 * @simplechat/client: the SimpleChat client for browsers and Node 20+.
 * The protocol's types, codes and limits (shared/src/wire.ts) come with it.
 */
export { createChatClient } from './chat-client.js';
export type { Ack, ChatClient, ChatClientEvents, ChatClientOptions, ChatClientState, ConversationRef, ConversationsPage, HistoryOptions, HistoryPage, ReceiptEvent, RoomsPage, SendOptions } from './chat-client.js';
export { ChatClientClosedError, RequestError, SendRejectedError, type RequestErrorCode } from './errors.js';
export { isFrameOf, parseServerFrame, parseWireMessage, type InboundFrame, type UnknownFrame } from './frames.js';
export { randomId } from './ids.js';
export { parseOutbox, type ClientPersistence, type OutboxEntry, type PersistedState } from './persistence.js';
export type { RequestFrame } from './requests.js';
export type { WebSocketConstructor } from './socket.js';
export { jwtExp } from './token.js';
export { Emitter, type EventMap } from './emitter.js';
export * from './wire.js';
export { signWebhook, verifyWebhook, WEBHOOK_EVENT_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TOLERANCE_SEC, type VerifyWebhookOptions } from './webhook-signature.js';
