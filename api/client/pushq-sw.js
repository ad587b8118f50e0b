/*
 * pushq service worker: shows the notifications pushq sends over Web Push and opens their URL on click.
 *
 * Serve this file from your site's own origin (a service worker must be same-origin with the pages
 * that register it) and register it, e.g. with pushq-subscribe.js:
 *
 *   pushq.subscribe({appId, vapidPublicKey, userToken, serviceWorkerUrl: '/pushq-sw.js'})
 *
 * What it does:
 *
 * - push: the message pushq sends is JSON {title, body, data, url?} (see docs/patient-fanout.md and
 *   POST /push/send). It shows a notification with that title and body; the URL to open is `url`, or
 *   else `data.url`, resolved against the service worker's scope (only http and https URLs are opened).
 *   The message options (docs/api.md "Message options") are passed to showNotification as they come:
 *   image, tag, renotify (only with a tag), actions ({action, title}; each one's `url` is kept in the
 *   notification's data) and icon, badge, dir, lang, requireInteraction, silent, vibrate, timestamp,
 *   each only when of the right type. A push without a readable JSON body still shows a notification
 *   (browsers require one per push).
 * - notificationclick: closes the notification, then focuses an open tab already showing that URL
 *   (ignoring the #fragment); otherwise opens the URL in a new tab. A click on an action button opens
 *   that action's URL (or, without one, the notification's). Without a URL it focuses any open tab of
 *   this site, or opens the service worker's scope.
 *
 * - receipts: a push from pushq carries a `receipt` token (signed by pushq for that one delivery; no user
 *   token ever reaches this worker). Once the notification is shown the worker posts
 *   {token, event: "displayed"} to pushq's POST /push/receipts, and {token, event: "clicked"} on a click
 *   ({token, event: "clicked", action} on a click on an action button: the action's id).
 *   pushq's API is at the `api` parameter of this script's URL (`pushq-sw.js?api=https://push.example.com`,
 *   which pushq-subscribe.js adds from its apiBase), else at this worker's own origin. Best effort: a
 *   receipt that cannot be posted is dropped, the notification is shown all the same.
 *
 * It has no fetch handler: it never sees your site's requests. The functions below are also exposed as
 * `self.pushq` so a site's own service worker can `importScripts('pushq-sw.js')` and reuse them.
 */
'use strict';

const DEFAULT_TITLE = 'New notification';

/** The push message as pushq sends it: a JSON object, or {body: text} for anything else. */
function parsePushData(data) {
  if (!data) return {};
  try {
    const parsed = data.json();
    return parsed && typeof parsed === 'object' ? parsed : {body: String(parsed)};
  } catch (error) {
    return {body: data.text()};
  }
}

/** The absolute http(s) URL a notification opens, or null. */
function targetUrl(payload) {
  const raw = typeof payload.url === 'string' ? payload.url
    : payload.data && typeof payload.data.url === 'string' ? payload.data.url : null;
  return absoluteUrl(raw);
}

/** ``raw`` resolved against the service worker's scope if it is an http(s) URL, else null. */
function absoluteUrl(raw) {
  if (!raw) return null;
  try {
    const url = new URL(raw, self.registration.scope);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
  } catch (error) {
    return null;
  }
}

/** Where receipts go: POST /push/receipts of the API named by this script's `api` parameter, or of its origin. */
function receiptsUrl() {
  const api = new URL(self.location.href).searchParams.get('api');
  try {
    return new URL('/push/receipts', api || self.location.origin).href;
  } catch (error) {
    return new URL('/push/receipts', self.location.origin).href;
  }
}

/** Post one receipt ("displayed" or "clicked", with the clicked action button's id); never fails the event. */
async function sendReceipt(token, event, action) {
  if (typeof token !== 'string' || !token) return;
  const receipt = typeof action === 'string' && action ? {token, event, action} : {token, event};
  try {
    await fetch(receiptsUrl(), {
      method: 'POST', credentials: 'omit', keepalive: true,
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(receipt),
    });
  } catch (error) {
    // Receipts are best effort: the notification itself was shown.
  }
}

// showNotification options a pushq message may carry, with the type each must have to be passed on.
const SHOWN_OPTIONS = {image: 'string', tag: 'string', icon: 'string', badge: 'string', dir: 'string',
  lang: 'string', requireInteraction: 'boolean', silent: 'boolean', timestamp: 'number'};

/** The showNotification options of a push message: its body, the options it carries, and what a click needs. */
function notificationOptions(payload) {
  const options = {body: typeof payload.body === 'string' ? payload.body : ''};
  for (const [name, type] of Object.entries(SHOWN_OPTIONS)) {
    if (typeof payload[name] === type) options[name] = payload[name];
  }
  if (options.tag && payload.renotify === true) options.renotify = true;  // renotify without a tag throws
  if (Array.isArray(payload.vibrate) && payload.vibrate.every((ms) => typeof ms === 'number')) {
    options.vibrate = payload.vibrate;
  }
  const data = {url: targetUrl(payload), data: payload.data || {}};
  if (typeof payload.receipt === 'string') data.receipt = payload.receipt;  // for the clicked receipt
  const actions = (Array.isArray(payload.actions) ? payload.actions : []).filter(
    (a) => a && typeof a.action === 'string' && a.action && typeof a.title === 'string');
  if (actions.length) {
    options.actions = actions.map((a) => ({action: a.action, title: a.title}));
    data.actions = Object.fromEntries(actions.map((a) => [a.action, absoluteUrl(a.url)]));
  }
  options.data = data;
  return options;
}

/** Show the notification for one push message, then report it displayed. */
async function showPushNotification(payload) {
  const title = typeof payload.title === 'string' && payload.title ? payload.title : DEFAULT_TITLE;
  const options = notificationOptions(payload);
  await self.registration.showNotification(title, options);
  await sendReceipt(options.data.receipt, 'displayed');
}

/** The URL a click opens: the clicked action's own, else the notification's. */
function clickTarget(notification, action) {
  const data = notification.data || {};
  return (action && data.actions && data.actions[action]) || data.url || null;
}

function withoutFragment(url) {
  const parsed = new URL(url);
  parsed.hash = '';
  return parsed.href;
}

/** Focus the tab showing the notification's URL (or the clicked action's), or open it. */
async function openNotificationTarget(notification, action) {
  const url = clickTarget(notification, action);
  const windows = await self.clients.matchAll({type: 'window', includeUncontrolled: true});
  const open = url
    ? windows.find((client) => withoutFragment(client.url) === withoutFragment(url))
    : windows[0];
  if (open) return open.focus();
  return self.clients.openWindow(url || self.registration.scope);
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  event.waitUntil(showPushNotification(parsePushData(event.data)));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const receipt = event.notification.data && event.notification.data.receipt;
  event.waitUntil(Promise.all([openNotificationTarget(event.notification, event.action), sendReceipt(receipt, 'clicked', event.action)]));
});

self.pushq = {parsePushData, targetUrl, notificationOptions, showPushNotification, clickTarget, openNotificationTarget,
  sendReceipt};
