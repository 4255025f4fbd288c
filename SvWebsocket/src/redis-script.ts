/**
 * Running a Lua script by its SHA1 (EVALSHA keeps the script's text off the
 * wire), loading it with EVAL when Redis does not have it (the first use, or
 * after a restart emptied its script cache).
 */
import { createHash } from 'node:crypto';

export interface ScriptRedis {
  eval(script: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
  evalSha(sha: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
}

export type ScriptRunner = (options: { keys: string[]; arguments: string[] }) => Promise<unknown>;

export function scriptRunner(redis: ScriptRedis, script: string): ScriptRunner {
  const sha = createHash('sha1').update(script).digest('hex');
  return (options) =>
    redis.evalSha(sha, options).catch((err: unknown) => {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return redis.eval(script, options);
      throw err;
    });
}
