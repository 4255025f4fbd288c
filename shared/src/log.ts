import pino, { type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'token',
  '*.token',
  'password',
  '*.password',
  'secret',
  '*.secret',
  'jwtSecret',
  'internalToken',
  '*.jwtSecret',
  '*.internalToken',
  'serverApiKeys',
  '*.serverApiKeys',
  'req.headers.authorization',
  'headers.authorization',
];

/** One root logger per process; components take children (`log.child({ component })`). */
export function createLogger(service: string, level: LevelWithSilent = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    // Synchronous writes: nothing is logged per message, and an asynchronous stdout lets the
    // last lines before process.exit() overtake one still being written ("stopped" before "drained").
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
