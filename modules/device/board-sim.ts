/*
 * Moddable's Linux simulator: "device/board" on lin (./board-api).
 *
 * The simulator runs on a laptop that is already online with a set clock, so
 * the network is the host's (./wifi HostNetwork) and no SNTP runs
 * (doorward.time.source "host"). It has no GPIO: the status LED and the chime
 * are log lines. No camera and no OTA slots (embedded:update does not exist on
 * lin). The vault key is the development key of ./vault-key-sim, which says
 * at every boot that it protects nothing. The provisioning channel is a file
 * (./provision-file), read and deleted through glibc, bound with the XS FFI in
 * hardware/lin.json (64-bit Linux: size_t and ssize_t are 64 bits).
 */
import FFI from "mc/ffi";
import type { Board, OpenBoardOptions } from "./board-api";
import type { BundleFiles } from "./provision-file";
import { createVaultKeyProvider } from "device/vault-key";
import { readChipState } from "device/chip-lock";
import { HostNetwork } from "./wifi";

/** The glue mcconfig generates for hardware/lin.json's "ffi" entry. */
interface Libc {
  open(path: string, flags: number): number;
  read(fd: number, buffer: ArrayBuffer, count: bigint): bigint;
  close(fd: number): number;
  unlink(path: string): number;
}

const O_RDONLY = 0;
const READ_CHUNK = 4096;

function libcFiles(): BundleFiles {
  const libc = new FFI() as unknown as Libc;
  return {
    read(path, max) {
      const fd = libc.open(path, O_RDONLY);
      if (fd < 0) return undefined;
      try {
        const parts: Uint8Array[] = [];
        let total = 0;
        while (total <= max) {
          const chunk = new ArrayBuffer(READ_CHUNK);
          const n = Number(libc.read(fd, chunk, BigInt(READ_CHUNK)));
          if (n < 0) throw new Error("provisioning file: read failed");
          if (n === 0) break;
          parts.push(new Uint8Array(chunk, 0, n));
          total += n;
        }
        const out = new Uint8Array(total);
        let at = 0;
        for (const p of parts) {
          out.set(p, at);
          at += p.length;
          p.fill(0);
        }
        return out;
      } finally {
        libc.close(fd);
      }
    },
    remove(path) {
      return libc.unlink(path) === 0;
    },
  };
}

export function openBoard(options: OpenBoardOptions): Board {
  const { settings, log, random, schedule } = options;
  const { keys, kind } = createVaultKeyProvider({ random, log, allowPlainKey: true });
  const board: Board = {
    keys,
    keyKind: kind,
    network: () => new HostNetwork(schedule),
    chip: readChipState,
    chime: (on) => {
      if (on) log("info", "chime: ding");
    },
  };
  if (settings.provisioning.channel === "file") board.files = libcFiles();
  return board;
}
