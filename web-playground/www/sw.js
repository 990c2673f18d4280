// Makes the playground work offline once loaded: every asset is cached at install, then
// served from the network when it answers and from the cache when it does not.
// `cargo xtask playground` replaces BUILD with a digest of the assets, so a new build is a new
// cache and the old one is dropped.
const CACHE = 'celine-playground-BUILD';
const ASSETS = [
  './', 'index.html', 'app.js', 'style.css', 'default-policy.json', 'default-tests.json',
  'pkg/web_playground.js', 'pkg/web_playground_bg.wasm',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(ASSETS)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith('celine-playground-') && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET' || new URL(req.url).origin !== self.location.origin) return;
  event.respondWith(
    fetch(req)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(CACHE).then((c) => c.put(req, copy));
        }
        return res;
      })
      .catch(() => caches.match(req, { ignoreSearch: true }).then((hit) => hit || Response.error())),
  );
});
