/*
 * "mc/ffi": the XS FFI glue class, missing from @moddable/typings 5.6.0.
 *
 * Declared like the SDK 8.2 fallback (typings/mc/ffi.d.ts). On a real build
 * mcconfig generates mc.ffi.d.ts from the manifest's "ffi" key with exactly the
 * functions bound for that platform (hardware/esp32.json binds
 * esp_fill_random, hardware/lin.json binds getrandom), so the random modules
 * describe the one function they call with their own interface and cast to it:
 * main.ts type-checks both platforms' programs against whichever glue exists.
 */
declare module "mc/ffi" {
  interface FFI {
    [name: string]: (...args: any[]) => any;
  }
  const FFI: { new (): FFI };
  export default FFI;
}
