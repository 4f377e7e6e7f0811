/*
 * Topic names and thing names, in one place.
 *
 * Every topic a thing uses sits under doorward/<thing>/ so that one AWS IoT
 * policy line using ${iot:Connection.Thing.ThingName} confines each device to
 * its own subtree. Depth stays well under AWS's 7-slash limit and nothing
 * uses the reserved $aws/ prefix except AWS-defined features (shadow, jobs, streams).
 */

/** AWS IoT thing names: 1–128 of [a-zA-Z0-9:_-]. The MQTT client ID is the thing name. */
const THING_NAME = /^[a-zA-Z0-9:_-]{1,128}$/;

export function isThingName(name: unknown): name is string {
  return typeof name === "string" && THING_NAME.test(name);
}

export function assertThingName(name: unknown): string {
  if (!isThingName(name)) throw new TypeError("thing name must be 1-128 characters of [a-zA-Z0-9:_-]");
  return name;
}

export const TOPIC_ROOT = "doorward";

export function topicsFor(thing: string) {
  assertThingName(thing);
  const base = `${TOPIC_ROOT}/${thing}`;
  return {
    /** Signed events: rings, snapshot manifests, audit reports. Device → cloud, QoS 1. */
    events: `${base}/events`,
    /** Encrypted snapshot chunks. Device → cloud, QoS 1. */
    snapshots: `${base}/snapshots`,
    /** Authenticated commands. Cloud → device. */
    commands: `${base}/commands`,
    /** Results and rejection reasons for commands. Device → cloud. */
    replies: `${base}/replies`,
  } as const;
}
