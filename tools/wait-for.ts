/*
 * Waiting for the first item, past or future, that matches: the one helper the
 * cloud-side consumers share, so a test can await "the event with seq 3"
 * whether it already arrived or not.
 */
export function waitForMatch<T>(
  seen: readonly T[],
  subscribe: (listener: (item: T) => void) => () => void,
  predicate: (item: T) => boolean,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const found = seen.find(predicate);
  if (found !== undefined) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no matching ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = subscribe((item) => {
      if (!predicate(item)) return;
      clearTimeout(timer);
      off();
      resolve(item);
    });
  });
}
