// Buy credit with a card (DESIGN §6), the same against Stripe and localstripe:
// 1. POST /api/v1/me/payment-methods makes a SetupIntent; 2. stripe.confirmCardSetup hands the card to Stripe
// (3-D Secure may show here); 3. POST /api/v1/me/purchases charges it server-side; 4. when the bank wants the
// customer again (requires_action), stripe.confirmCardPayment, then GET /api/v1/me/purchases/{id} settles it.
// Card data never reaches our server: only the payment method id Stripe.js returns.
(function () {
  'use strict';

  const form = document.getElementById('buy-form');
  const statusLine = document.getElementById('status');
  const errorLine = document.getElementById('error');
  const payButton = document.getElementById('pay');

  class Problem extends Error {}

  function say(text) {
    statusLine.textContent = text;
  }

  function fail(text) {
    say('');
    errorLine.textContent = text;
    errorLine.hidden = false;
  }

  if (!form) {
    return;
  }
  if (typeof Stripe === 'undefined') {
    fail('The card form could not load. Reload the page, or try again later.');
    payButton.disabled = true;
    return;
  }

  const csrfToken = form.dataset.csrfToken;
  const currency = form.dataset.currency;
  const exponent = parseInt(form.dataset.exponent, 10);
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create('card');
  card.mount('#card-element');

  // "12.345600" -> "12.34 USD": the currency's own precision, rounding toward zero as the server does.
  function display(amount) {
    const parts = String(amount).split('.');
    if (exponent <= 0) {
      return parts[0] + ' ' + currency;
    }
    return parts[0] + '.' + ((parts[1] || '') + '000000').slice(0, exponent) + ' ' + currency;
  }

  function day(iso) {
    return new Date(iso).toLocaleDateString('en-GB', {day: 'numeric', month: 'long', year: 'numeric',
                                                      timeZone: 'UTC'});
  }

  function newKey() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') {
      return window.crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function api(method, path, body, headers) {
    const init = {
      method: method,
      credentials: 'same-origin',
      headers: Object.assign({'Accept': 'application/json', 'X-CSRF-Token': csrfToken}, headers || {}),
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new Problem('We could not reach our server. Check your connection and try again.');
    }
    let data = {};
    try {
      data = await response.json();
    } catch (err) {
      data = {};
    }
    if (response.status === 401) {
      throw new Problem('Your session has ended. Sign in again, then buy your credit.');
    }
    if (!response.ok) {
      throw new Problem(data.detail || data.title || 'Something went wrong. Nothing was charged; please try again.');
    }
    return data;
  }

  function cardProblem(error) {
    return new Problem((error && error.message) || 'We could not use this card. Check the details or try another card.');
  }

  function failedPayment(code) {
    if (code === 'authentication_failed' || code === 'payment_intent_authentication_failure') {
      return 'Your bank did not confirm the payment, so nothing was charged. Try again or use another card.';
    }
    return 'The payment did not go through and nothing was charged. Try again or use another card.';
  }

  function chosenAmount() {
    const picked = form.querySelector('input[name="amount"]:checked');
    if (!picked) {
      return '';
    }
    if (picked.value === 'custom') {
      return document.getElementById('custom-amount').value.trim();
    }
    return picked.value;
  }

  document.getElementById('custom-amount').addEventListener('focus', function () {
    document.getElementById('amount-custom').checked = true;
  });

  function succeeded(purchase, wallet) {
    document.getElementById('balance').textContent = display(wallet.balance);
    let text = display(purchase.amount) + ' was added to your account. Your balance is now ' +
      display(wallet.balance) + '.';
    if (purchase.lot && purchase.lot.expires_at) {
      text += ' This credit expires on ' + day(purchase.lot.expires_at) + '.';
    }
    document.getElementById('result-text').textContent = text;
    document.getElementById('result').hidden = false;
    form.hidden = true;
  }

  async function pay() {
    const amount = chosenAmount();
    if (!/^[0-9]{1,9}([.][0-9]{1,6})?$/.test(amount)) {
      throw new Problem('Choose an amount, for example 10.00.');
    }
    say('Checking your card…');
    const setup = await api('POST', '/api/v1/me/payment-methods', {});
    const confirmed = await stripe.confirmCardSetup(setup.client_secret, {payment_method: {card: card}});
    if (confirmed.error) {
      throw cardProblem(confirmed.error);
    }
    let method = confirmed.setupIntent.payment_method;
    if (method && typeof method === 'object') {
      method = method.id;
    }
    say('Paying…');
    let purchase = await api('POST', '/api/v1/me/purchases',
                             {amount: amount, payment_method: method,
                              remember: document.getElementById('remember').checked},
                             {'Idempotency-Key': newKey()});
    if (purchase.status === 'requires_action') {
      say('Your bank asks you to confirm this payment…');
      await stripe.confirmCardPayment(purchase.client_secret);
      // Whatever the dialog answered, the server asks the gateway and decides.
      say('Checking the payment…');
      purchase = await api('GET', '/api/v1/me/purchases/' + encodeURIComponent(purchase.id));
    }
    if (purchase.status === 'succeeded') {
      say('');
      succeeded(purchase, await api('GET', '/api/v1/me/wallet'));
    } else if (purchase.status === 'failed') {
      throw new Problem(failedPayment(purchase.failure_code));
    } else {
      say('We are waiting for your bank. The credit appears in your account as soon as the payment goes ' +
          'through, and we email you a receipt. Please do not pay again.');
      form.dataset.waiting = 'true';
    }
  }

  form.addEventListener('submit', async function (event) {
    event.preventDefault();
    errorLine.hidden = true;
    errorLine.textContent = '';
    payButton.disabled = true;
    try {
      await pay();
    } catch (err) {
      fail(err instanceof Problem ? err.message : 'Something went wrong. Please try again.');
    } finally {
      payButton.disabled = form.dataset.waiting === 'true';  // a payment the bank has not answered: no second one
    }
  });
})();
