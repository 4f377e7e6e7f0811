/*
 * "mc/ffi" additions for the vault's device key (modules/device/key-provider.ts).
 *
 * Merges into the FFI class declared in ./mc-ffi.d.ts. The manifest binds
 * ESP-IDF's esp_hmac_calculate(hmac_key_id_t key_id, const void *message,
 * size_t message_len, uint8_t *hmac) as ["uint32_t", "void*", "uint32_t",
 * "uint8_t[32]"] returning "int32_t" (esp_err_t): the enum and size_t are 32
 * bits on the ESP32-S3, and "uint8_t[32]" makes the glue check the output
 * buffer holds 32 bytes. Bound on esp32 only.
 */
declare module "mc/ffi" {
  export default interface FFI {
    esp_hmac_calculate(arg0: number, arg1: ArrayBuffer, arg2: number, arg3: ArrayBuffer): number;
  }
}
