/*
 * XS memory peaks of a running -d build, without xsbug: `npm run sim:lin -- --measure`.
 *
 * A debug build of the firmware connects to xsbug's port at boot (mcsim reads
 * XSBUG_HOST and XSBUG_PORT) and, built with instrumentation, sends a
 * <samples> line every second: the chunk heap in use and reserved, the slot
 * heap in use and reserved, and the deepest the stack went since the last
 * sample (XS resets that peak at each sample, so the largest of them is the
 * run's peak). This is a listener for that protocol that answers the login
 * with an empty breakpoint list (so nothing stops the firmware), passes
 * trace() lines on, and keeps the maxima, and the reserved sizes, which
 * show whether the heap ever had to grow.
 *
 * "In use" between collections includes garbage not yet collected, so with a
 * fixed heap it approaches the heap's size before each collection; what
 * fits is shown by a run with the board's creation values and no growth.
 * The lowest reading that follows a collection (the count of collections
 * went up) bounds the live data from above at that moment; the largest of
 * those is reported as the live peak.
 *
 * Each XS machine connects on its own (the main machine first, then any
 * Worker), and each one's figures are kept apart, by the name it logs in with.
 */
import net from "node:net";

export interface XsPeaks {
  samples: number;
  /** Bytes: the most in use, and the most reserved (a fixed heap keeps this at its initial size). */
  chunksUsed: number;
  chunksReserved: number;
  chunksReservedFirst: number;
  slotsUsedBytes: number;
  slotsReservedBytes: number;
  slotsReservedFirst: number;
  /** Bytes of stack at the deepest point, and the stack's size. */
  stackPeakBytes: number;
  stackBytes: number;
  /** The largest heap in use right after a collection (live data plus what the collector kept). */
  chunksAfterGc: number;
  slotsAfterGcBytes: number;
  collections: number;
}

export interface XsMeter {
  port: number;
  /** The first machine to connect: the main one. */
  peaks(): XsPeaks;
  /** Every machine, in the order they connected, by login name. */
  machines(): Array<{ name: string; peaks: XsPeaks }>;
  /** Start a new window for peaks (e.g. per scenario step). */
  mark(): XsPeaks;
  close(): Promise<void>;
}

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
const decode = (s: string) => s.replace(/&(#x[0-9a-f]+|#\d+|\w+);/gi, (m, e: string) => (e[0] === "#" ? String.fromCodePoint(e[1] === "x" || e[1] === "X" ? parseInt(e.slice(2), 16) : Number(e.slice(1))) : ENTITIES[e] ?? m));

function empty(): XsPeaks {
  return { samples: 0, chunksUsed: 0, chunksReserved: 0, chunksReservedFirst: 0, slotsUsedBytes: 0, slotsReservedBytes: 0, slotsReservedFirst: 0, stackPeakBytes: 0, stackBytes: 0, chunksAfterGc: 0, slotsAfterGcBytes: 0, collections: 0 };
}

/** Listen on 127.0.0.1 (port 0: ephemeral) for one debug machine. */
export async function startXsMeter(onLog: (line: string) => void, port = 0): Promise<XsMeter> {
  interface Machine { name: string; names: string[]; total: XsPeaks; windowed: XsPeaks; lastGc: number; logBuffer: string }
  const machines: Machine[] = [];
  const sockets = new Set<net.Socket>();
  const record = (m: Machine, values: number[]) => {
    const { names } = m;
    const at = (name: string) => {
      const i = names.indexOf(name);
      return i < 0 ? NaN : values[i];
    };
    const chunks = at("Chunk used"), chunksReserved = at("Chunk available"), slots = at("Slot used"), slotsReserved = at("Slot available");
    const stack = at("Stack used"), stackSize = at("Stack available"), gc = at("Garbage collections");
    if ([chunks, slots, stack].some(Number.isNaN)) return;
    for (const p of [m.total, m.windowed]) {
      if (p.samples === 0) {
        p.chunksReservedFirst = chunksReserved;
        p.slotsReservedFirst = slotsReserved;
      }
      p.samples++;
      p.chunksUsed = Math.max(p.chunksUsed, chunks);
      p.chunksReserved = Math.max(p.chunksReserved, chunksReserved);
      p.slotsUsedBytes = Math.max(p.slotsUsedBytes, slots);
      p.slotsReservedBytes = Math.max(p.slotsReservedBytes, slotsReserved);
      p.stackPeakBytes = Math.max(p.stackPeakBytes, stack);
      p.stackBytes = Math.max(p.stackBytes, stackSize);
      p.collections = Math.max(p.collections, gc);
      if (m.lastGc >= 0 && gc > m.lastGc) {
        p.chunksAfterGc = Math.max(p.chunksAfterGc, chunks);
        p.slotsAfterGcBytes = Math.max(p.slotsAfterGcBytes, slots);
      }
    }
    m.lastGc = gc;
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.setEncoding("utf8");
    let text = "";
    const m: Machine = { name: "?", names: [], total: empty(), windowed: empty(), lastGc: -1, logBuffer: "" };
    machines.push(m);
    socket.on("data", (chunk: string) => {
      text += chunk;
      for (;;) {
        const end = text.indexOf("</xsbug>");
        if (end < 0) break;
        const message = text.slice(0, end);
        text = text.slice(end + 8);
        const login = /<login name="([^"]*)"/.exec(message);
        if (login) {
          m.name = decode(login[1]);
          socket.write("\r\n<set-all-breakpoints></set-all-breakpoints>\r\n");
        }
        const inst = /<instruments>([\s\S]*?)<\/instruments>/.exec(message);
        if (inst) m.names = [...inst[1].matchAll(/<instrument name="([^"]*)"/g)].map((x) => decode(x[1]));
        for (const x of message.matchAll(/<samples>([^<]*)<\/samples>/g)) record(m, x[1].split(",").map(Number));
        for (const x of message.matchAll(/<log(?: [^>]*)?>([\s\S]*?)<\/log>/g)) {
          m.logBuffer += decode(x[1]);
          const lines = m.logBuffer.split("\n");
          m.logBuffer = lines.pop() ?? "";
          for (const line of lines) onLog(line);
        }
        // Anything that stops the machine (an exception it was not asked to break on, a debugger statement) goes on.
        const brk = /<break(?: path="([^"]*)" line="(\d+)")?[^>]*>([\s\S]*?)<\/break>/.exec(message);
        if (brk) {
          onLog(`(break at ${decode(brk[1] ?? "?")}:${brk[2] ?? "?"}: ${decode(brk[3]).trim()})`);
          socket.write("\r\n<go/>\r\n");
        }
      }
    });
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    peaks: () => ({ ...(machines[0]?.total ?? empty()) }),
    machines: () => machines.map((x) => ({ name: x.name, peaks: { ...x.total } })),
    mark: () => {
      const m = machines[0];
      if (!m) return empty();
      const w = m.windowed;
      m.windowed = empty();
      return w;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
