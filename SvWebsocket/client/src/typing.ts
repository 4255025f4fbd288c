/**
 * Who is typing where: a user shows as typing in a conversation for a while
 * after each typing signal from it (the sender repeats it about once a
 * second while typing), and stops at once when a message from it arrives
 * there. No DOM: the page asks `who(key)` and words it with `typingText`.
 */

/** how long a typing signal shows */
export const TYPING_SHOWN_MS = 3000;

export type Typing = ReturnType<typeof createTyping>;

export function createTyping(changed: () => void, shownMs = TYPING_SHOWN_MS) {
  /** conversation key -> user -> the timer that ends its signal */
  const byKey = new Map<string, Map<string, ReturnType<typeof setTimeout>>>();

  function stopped(key: string, user: string): void {
    const users = byKey.get(key);
    const timer = users?.get(user);
    if (!users || timer === undefined) return;
    clearTimeout(timer);
    users.delete(user);
    if (users.size === 0) byKey.delete(key);
    changed();
  }

  return {
    /** a typing signal from `user` in the conversation `key` */
    typing(key: string, user: string): void {
      let users = byKey.get(key);
      if (!users) byKey.set(key, (users = new Map()));
      const isNew = !users.has(user);
      clearTimeout(users.get(user));
      users.set(
        user,
        setTimeout(() => stopped(key, user), shownMs),
      );
      if (isNew) changed();
    },
    /** `user` sent its message: it is not typing any more */
    stopped,
    /** who is typing in a conversation, in the order they started */
    who: (key: string): string[] => [...(byKey.get(key)?.keys() ?? [])],
    clear(): void {
      for (const users of byKey.values()) for (const timer of users.values()) clearTimeout(timer);
      byKey.clear();
    },
  };
}

/** "bob is typing…", "bob and carol are typing…", "4 people are typing…"; empty when nobody is. */
export function typingText(users: readonly string[]): string {
  if (users.length === 0) return '';
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}
