/*
 * The names an app (an owner's or guest's browser) uses on the broker, in code the
 * web app bundles as well as the stand-in: its client ID, the invitation-answer
 * topic kind, and AWS IoT's lifecycle-event prefix. The rules about them live in
 * ./policy; these are only the names, so the page need not load the policy engine.
 */

/** Where a guest's browser answers an invitation: doorward/<thing>/invites/<user>. */
export const INVITES_KIND = "invites";

/** An app's MQTT client ID: app:<thing>:<user>, optionally :<suffix> for several tabs. */
export function appClientIdBase(thing: string, user: string): string {
  return `app:${thing}:${user}`;
}

/** AWS IoT lifecycle events: $aws/events/presence/{connected,disconnected}/<clientId>. */
export const PRESENCE_PREFIX = "$aws/events/presence";
