/* The subscribe page: registers the service worker on load, subscribes and registers on submit. */
'use strict';

(function () {
  const status = document.getElementById('status');
  const form = document.getElementById('subscribe-form');

  function show(text, kind) {
    status.textContent = text;
    status.className = kind || '';
    status.dataset.state = kind || 'busy';
  }

  if (!pushq.supported()) {
    show('This browser does not support Web Push.', 'error');
    return;
  }
  pushq.registerServiceWorker()
    .then((registration) => show(`Service worker active (scope ${registration.scope}).`, 'ready'))
    .catch((error) => show(`Service worker failed: ${error.message}`, 'error'));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    show('Subscribing…');
    try {
      const {deviceId} = await pushq.subscribe({
        appId: form.elements.app_id.value.trim(),
        vapidPublicKey: form.elements.vapid_public_key.value.trim(),
        userToken: form.elements.user_token.value.trim(),
      });
      show(`Registered: device ${deviceId}`, 'ok');
      status.dataset.deviceId = deviceId;
    } catch (error) {
      show(`Failed: ${error.message}${error.reason ? ` (${error.reason})` : ''}`, 'error');
    }
  });
}());
