/*
 * pushq-subscribe.js: subscribe this browser to Web Push and register it with pushq.
 *
 *   <script src="/client/pushq-subscribe.js"></script>
 *   <script>
 *     const {deviceId} = await pushq.subscribe({
 *       appId: 'APP_ID',                     // the pushq app
 *       vapidPublicKey: 'BPx…',              // the app's VAPID public key (pushq create-app prints it)
 *       userToken: 'eyJ…',                   // the signed-in user's JWT (sub = user id, enrolled in the app)
 *       // apiBase: '',                      // where the pushq API is; default: this page's origin
 *       // serviceWorkerUrl: '/pushq-sw.js', // default: pushq-sw.js next to this script
 *       // scope: '/',                       // default: the service worker's directory
 *     });
 *   </script>
 *
 * Steps: asks for notification permission, registers the service worker and waits until it is active,
 * subscribes with PushManager.subscribe({userVisibleOnly: true, applicationServerKey}) (reusing an
 * existing subscription made with the same key), then POSTs /push/devices/register with
 * {app_id, platform: "web", push_token: JSON.stringify(subscription)} and the user's token as Bearer.
 * Registering again is harmless: pushq deduplicates on the subscription's endpoint.
 *
 * Failures are thrown as Error with `status`, `error` and `reason` from pushq's JSON error when the API
 * refused the registration (e.g. 404 app_not_found when the user is not enrolled in the app).
 * The API must be reachable from the page without CORS: serve the page from pushq's origin or put pushq
 * behind your site's origin (a reverse-proxy path) and pass that path as apiBase.
 */
(function (global) {
  'use strict';

  const scriptUrl = global.document && global.document.currentScript ? global.document.currentScript.src : global.location.href;

  /** A base64url string (a VAPID public key) as the bytes PushManager.subscribe takes. */
  function urlBase64ToUint8Array(value) {
    const padded = value + '='.repeat((4 - (value.length % 4)) % 4);
    const binary = global.atob(padded.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function sameBytes(buffer, bytes) {
    if (!buffer) return false;
    const view = new Uint8Array(buffer);
    return view.length === bytes.length && view.every((byte, i) => byte === bytes[i]);
  }

  function supported() {
    return 'serviceWorker' in global.navigator && 'PushManager' in global && 'Notification' in global;
  }

  function activated(registration) {
    if (registration.active) return Promise.resolve(registration);
    const worker = registration.installing || registration.waiting;
    return new Promise((resolve, reject) => {
      worker.addEventListener('statechange', () => {
        if (worker.state === 'activated') resolve(registration);
        if (worker.state === 'redundant') reject(new Error('the service worker failed to install'));
      });
    });
  }

  /** Register the service worker (default: pushq-sw.js next to this script) and wait until it is active. */
  async function registerServiceWorker(options = {}) {
    if (!supported()) throw new Error('This browser does not support Web Push');
    let url = options.serviceWorkerUrl || new URL('pushq-sw.js', scriptUrl).href;
    if (options.apiBase && !options.serviceWorkerUrl) {
      // The worker posts display and click receipts to pushq's API: tell it where that is.
      const withApi = new URL(url);
      withApi.searchParams.set('api', new URL(options.apiBase, global.location.href).href);
      url = withApi.href;
    }
    const registration = await global.navigator.serviceWorker.register(url, options.scope ? {scope: options.scope} : undefined);
    return activated(registration);
  }

  async function apiError(response) {
    let body = {};
    try { body = await response.json(); } catch (ignored) { /* not JSON */ }
    const error = new Error(body.message || `pushq answered HTTP ${response.status}`);
    Object.assign(error, {status: response.status, error: body.error, reason: body.reason});
    return error;
  }

  /** Subscribe and register with pushq; resolves to {deviceId, subscription}. */
  async function subscribe(options) {
    for (const name of ['appId', 'vapidPublicKey', 'userToken']) {
      if (!options || !options[name]) throw new Error(`pushq.subscribe needs ${name}`);
    }
    const registration = await registerServiceWorker(options);
    const permission = await global.Notification.requestPermission();
    if (permission !== 'granted') throw new Error(`Notification permission is ${permission}`);
    const applicationServerKey = urlBase64ToUint8Array(options.vapidPublicKey);
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameBytes(subscription.options && subscription.options.applicationServerKey, applicationServerKey)) {
      await subscription.unsubscribe(); // made with another key: the push service would refuse our pushes
      subscription = null;
    }
    if (!subscription) {
      subscription = await registration.pushManager.subscribe({userVisibleOnly: true, applicationServerKey});
    }
    const response = await global.fetch(`${options.apiBase || ''}/push/devices/register`, {
      method: 'POST',
      headers: {'Content-Type': 'application/json', Authorization: `Bearer ${options.userToken}`},
      body: JSON.stringify({app_id: options.appId, platform: 'web', push_token: JSON.stringify(subscription)}),
    });
    if (!response.ok) throw await apiError(response);
    const {device_id: deviceId} = await response.json();
    return {deviceId, subscription};
  }

  /** Remove the device from pushq (DELETE /push/devices/{id}) and end the browser's subscription. */
  async function unsubscribe(options) {
    const response = await global.fetch(`${options.apiBase || ''}/push/devices/${encodeURIComponent(options.deviceId)}`, {
      method: 'DELETE', headers: {Authorization: `Bearer ${options.userToken}`},
    });
    if (!response.ok && response.status !== 404) throw await apiError(response);
    const registration = await global.navigator.serviceWorker.getRegistration(options.scope);
    const subscription = registration && await registration.pushManager.getSubscription();
    if (subscription) await subscription.unsubscribe();
  }

  global.pushq = {supported, urlBase64ToUint8Array, registerServiceWorker, subscribe, unsubscribe};
}(self));
