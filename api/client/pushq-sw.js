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
 * - push: the message pushq sends is JSON {title, body, data, url?} (see README "Patient fan-out" and
 *   POST /push/send). It shows a notification with that title and body; the URL to open is `url`, or
 *   else `data.url`, resolved against the service worker's scope (only http and https URLs are opened).
 *   A push without a readable JSON body still shows a notification (browsers require one per push).
 * - notificationclick: closes the notification, then focuses an open tab already showing that URL
 *   (ignoring the #fragment); otherwise opens the URL in a new tab. Without a URL it focuses any open
 *   tab of this site, or opens the service worker's scope.
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
  if (!raw) return null;
  try {
    const url = new URL(raw, self.registration.scope);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
  } catch (error) {
    return null;
  }
}

/** Show the notification for one push message. */
function showPushNotification(payload) {
  const title = typeof payload.title === 'string' && payload.title ? payload.title : DEFAULT_TITLE;
  return self.registration.showNotification(title, {
    body: typeof payload.body === 'string' ? payload.body : '',
    data: {url: targetUrl(payload), data: payload.data || {}},
  });
}

function withoutFragment(url) {
  const parsed = new URL(url);
  parsed.hash = '';
  return parsed.href;
}

/** Focus the tab showing the notification's URL, or open it. */
async function openNotificationTarget(notification) {
  const url = notification.data && notification.data.url;
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
  event.waitUntil(openNotificationTarget(event.notification));
});

self.pushq = {parsePushData, targetUrl, showPushNotification, openNotificationTarget};
