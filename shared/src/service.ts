/**
 * Process edge shared by the three services' main.ts: --help, config errors as
 * one line without a stack, signal handling with a shutdown deadline.
 */
import { ConfigError, errorMessage } from './errors';
import { helpText, type ConfigSpec } from './config';
import type { Logger } from './log';

export interface RunningService {
  close(): Promise<void>;
}

export function printHelpIfAsked(title: string, spec: ConfigSpec, argv: string[]): void {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${helpText(title, spec)}\n`);
    process.exit(0);
  }
}

/** Prints a startup failure the way a user should see it, and exits non-zero. */
export function failStartup(service: string, err: unknown): never {
  const msg = err instanceof ConfigError ? err.message : errorMessage(err);
  process.stderr.write(`${service}: ${msg}\n`);
  process.exit(1);
}

export function installSignalHandlers(service: RunningService, log: Logger, shutdownTimeoutMs: number): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    const timer = setTimeout(() => {
      log.error({ shutdownTimeoutMs }, 'shutdown deadline passed; exiting anyway');
      process.exit(1);
    }, shutdownTimeoutMs);
    timer.unref();
    service.close().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (reason) => {
    log.error({ err: reason }, 'unhandled rejection');
  });
}
