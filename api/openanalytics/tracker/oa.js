/*! OpenAnalytics tracker. <script defer src="…/oa.js" data-site-id="site_…" [data-api="…/collect"] [data-respect-dnt="true"] [data-hash="true"]> */
(function (w, d, n) {
  var s = d.currentScript, site = s && s.getAttribute("data-site-id");
  if (!site) return;
  var api = s.getAttribute("data-api") || new URL(s.src).origin + "/collect";
  var UID = "_oaa_uid", SID = "_oaa_sid", OUT = "_oaa_optout";
  function store(persist) { try { return persist ? w.localStorage : w.sessionStorage; } catch (e) {} }
  function get(k, p) { var st = store(p); return st ? st.getItem(k) : null; }
  function set(k, v, p) { var st = store(p); if (st) { try { v == null ? st.removeItem(k) : st.setItem(k, v); } catch (e) {} } }
  var dnt = s.getAttribute("data-respect-dnt") === "true" &&
    (n.doNotTrack == "1" || w.doNotTrack == "1" || n.msDoNotTrack == "1");
  var off = dnt || get(OUT, 1) === "1";
  var hashRoutes = s.getAttribute("data-hash") === "true";
  function here() { return hashRoutes ? location.href : location.href.split("#")[0]; }

  function send(p) {
    if (off) return;
    p.site_id = site;
    p.url = here();
    if (d.referrer) p.referrer = d.referrer;
    p.screen_width = w.screen && screen.width;
    p.language = n.language;
    var uid = get(UID, 1);
    if (uid && !p.user_id) p.user_id = uid;
    var body = JSON.stringify(p);
    // sendBeacon sends text/plain: no CORS preflight, and it survives page unloads.
    if (!(n.sendBeacon && n.sendBeacon(api, body))) {
      fetch(api, { method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" } })["catch"](function () {});
    }
  }

  // again: the same page within 30 minutes is not viewed again (replaceState, an in-page #anchor,
  // a reload); coming back to it from elsewhere, or after a pause, is.
  function pageview(again) {
    if (off) return; // and store nothing either
    var page = here(), last = (get(SID) || "").split("\n"), now = Date.now();
    if (again && last[0] === page && now - last[1] < 18e5) return;
    set(SID, page + "\n" + now);
    send({ event_type: "pageview" });
  }
  function reloaded() {
    var p = w.performance, e = p && p.getEntriesByType && p.getEntriesByType("navigation")[0];
    return e ? e.type === "reload" : !!(p && p.navigation && p.navigation.type === 1);
  }

  function withoutMoney(o) {
    var out = {}, k;
    for (k in o) if (k !== "revenue" && k !== "currency") out[k] = o[k];
    return out;
  }

  var api_ = {
    event: function (name, p) { send({ event_type: "event", event_name: name, properties: p || {} }); },
    identify: function (id, traits) {
      if (off) return;
      set(UID, String(id), 1);
      send({ event_type: "identify", user_id: String(id), properties: traits || {} });
    },
    conversion: function (name, o) {
      o = o || {};
      var p = { event_type: "conversion", event_name: name, properties: withoutMoney(o) };
      if (o.revenue != null) { p.revenue = o.revenue; p.currency = o.currency; }
      send(p);
    },
    optOut: function () {
      off = true;
      set(UID, null, 1); set(SID, null); set(OUT, "1", 1);
    },
    pageview: function () { pageview(); } // asked for: always sent (the history hooks count navigations)
  };

  function oa(cmd) {
    var f = api_[cmd];
    if (f) f.apply(null, [].slice.call(arguments, 1));
  }
  var queued = [].slice.call((w.oa && w.oa.q) || []), i;
  w.oa = oa;
  ["pushState", "replaceState"].forEach(function (m) {
    var orig = history[m];
    history[m] = function () { var r = orig.apply(this, arguments); pageview(1); return r; };
  });
  w.addEventListener("popstate", function () { pageview(1); });
  // A queued optOut wins over everything; then the page is viewed; then the queued calls.
  for (i = 0; i < queued.length; i++) if (queued[i][0] === "optOut") oa("optOut");
  pageview(reloaded());
  for (i = 0; i < queued.length; i++) if (queued[i][0] !== "optOut") oa.apply(null, queued[i]);
})(window, document, navigator);
