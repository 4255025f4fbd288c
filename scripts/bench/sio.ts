/** The one Socket.IO event the comparison's frames travel in, both ways (sio-server.ts, load-worker.ts). */
export const SIO_EVENT = 'f';
