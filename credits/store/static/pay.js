// Confirm an auto-recharge the bank wants confirmed (the emailed pay link, DESIGN §6), the same against Stripe
// and localstripe: stripe.confirmCardPayment(client_secret) runs the bank's 3-D Secure check, then the form
// posts the link's token to /pay, where the server asks the gateway and shows the outcome. Whatever the
// dialog answered, the server decides; no card data is handled here.
(function () {
  'use strict';

  const form = document.getElementById('pay-form');
  if (!form) {
    return;
  }
  const statusLine = document.getElementById('status');
  const errorLine = document.getElementById('error');
  const button = document.getElementById('confirm');

  function fail(text) {
    statusLine.textContent = '';
    errorLine.textContent = text;
    errorLine.hidden = false;
  }

  if (typeof Stripe === 'undefined') {
    fail('The payment page could not load. Reload the page, or try again later.');
    button.disabled = true;
    return;
  }
  const stripe = Stripe(form.dataset.publishableKey);
  let busy = false;

  form.addEventListener('submit', async function (event) {
    event.preventDefault();
    if (busy) {
      return;
    }
    busy = true;
    button.disabled = true;
    errorLine.hidden = true;
    statusLine.textContent = 'Your bank asks you to confirm this payment…';
    try {
      await stripe.confirmCardPayment(form.dataset.clientSecret);
    } catch (err) {
      // The server still asks the gateway below: the outcome is decided there.
    }
    statusLine.textContent = 'Checking the payment…';
    form.submit();  // no submit event: straight to the server
  });
})();
