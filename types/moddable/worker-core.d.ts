/*
 * What @moddable/typings 5.6.0's "worker" lacks: the FreeRTOS options of the
 * SDK's modWorker.c (documentation/base/worker.md), which pin a worker to an
 * ESP32 core and set its task priority.
 */
import "worker";

declare module "worker" {
  interface WorkerOptions {
    /** ESP32: the core the worker's task is pinned to. */
    core?: 0 | 1;
    /** FreeRTOS task priority (default 1; the main task runs at 4). */
    priority?: number;
  }
}
