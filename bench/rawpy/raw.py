#!/usr/bin/env python3
"""A minimal raw XMPP room client in Python, the second baseline of the
end-to-end benchmark (bench/e2e) beside the Go one (bench/raw).

It does what bench/raw does, the way a small Python program would: it logs in
by hand (STARTTLS, SASL SCRAM-SHA-1 without channel binding, resource
binding), enables stream management as xmpptrack does (so that the server
does the same work), joins the room, and sends groupchat messages from bytes
serialised before the run, keeping at most -window awaiting their reflection.
It splits what it reads into top-level elements with one regular expression
and finds its reflections with another (our id in the start tag, from our own
occupant JID). It answers the server's ack requests and nothing else.

Usage:

    raw.py -addr host:port -ca FILE -jid JID -password PW -room ROOM
           [-nick NICK] [-n N] [-window W] [-timeout DUR]

Its output is that of "xmpptrack muc -json" and bench/raw: a JSON line per
message at its outcome, then a summary line. On failure it writes the reason
to stderr and exits with status 1.

Standard library only, and only the light part of it: it parses its flags
and waits on its socket by hand rather than with argparse and selectors,
whose imports would cost more CPU time than a short run's messages.
"""

import base64
import hashlib
import hmac
import os
import re
import select
import socket
import ssl
import sys
import time

DELIVERED = "DELIVERED_TO_RECIPIENT"

# Reads ask for this much at once, as bench/raw's 64 KiB buffer.
READ_SIZE = 64 << 10
# Writes hand the TLS layer at most this much at once.
WRITE_SIZE = 64 << 10

# One complete top-level element, after optional whitespace: group 1 is its
# qualified name, group 2 what follows the name in the start tag (the
# attributes), and the element ends at the first end tag of the same name.
# That is enough for what a server sends a room client (an element never
# holds another of its own name there: no forwarded messages), and it is all
# matched in C. An incomplete element does not match; the next read completes
# it.
ELEMENT = re.compile(rb"\s*<([^\s/>]+)([^>]*?)(?:/>|>.*?</\1\s*>)", re.S)
# The server's stream header, optionally after an XML declaration.
HEADER = re.compile(rb"\s*(?:<\?xml[^>]*\?>)?\s*<stream:stream\b[^>]*>")
# The index of one of our messages in its id (see message_id).
OUR_ID = re.compile(rb" id='r(\d+)'")


class Failure(Exception):
    """Something went wrong: the message says what."""


def parse_duration(s):
    """Parses a Go-style duration such as 30s, 500ms, 1m or 1m30s."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ValueError("bad duration %r" % s)
    return sum(float(v) * units[u] for v, u in parts)


# The flags, as bench/raw's: name -> (conversion, default, help).
FLAGS = {
    "addr": (str, "", "server host:port (default: the JID's domain, port 5222)"),
    "ca": (str, "", "CA certificate file for STARTTLS"),
    "jid": (str, "", "account JID"),
    "password": (str, "", "password"),
    "room": (str, "", "room bare JID"),
    "nick": (str, "", "occupant nick (default: the JID's localpart)"),
    "n": (int, 1, "number of messages"),
    "window": (int, 10, "messages awaiting their reflection at once (0: all)"),
    "timeout": (parse_duration, 30.0, "how long to wait for the server before the messages left time out"),
}


class Options:
    pass


def usage(problem):
    lines = ["raw.py: %s" % problem, "usage: raw.py -addr host:port -ca FILE -jid JID -password PW -room ROOM "
             "[-nick NICK] [-n N] [-window W] [-timeout DUR]"]
    lines += ["  -%-9s %s" % (name, f[2]) for name, f in FLAGS.items()]
    print("\n".join(lines), file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    """Parses the flags as Go's flag package does: -name value, -name=value,
    one or two dashes."""
    o = Options()
    for name, (_, default, _) in FLAGS.items():
        setattr(o, name, default)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "-help", "--help"):
            usage("help requested")
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in FLAGS:
            usage("unknown argument %r" % arg)
        if not eq:
            if i == len(argv):
                usage("flag -%s needs a value" % name)
            value = argv[i]
            i += 1
        try:
            setattr(o, name, FLAGS[name][0](value))
        except ValueError:
            usage("bad value %r for -%s" % (value, name))
    local, at, domain = o.jid.partition("@")
    domain = domain.split("/", 1)[0]
    if not at or not local or not domain:
        usage("bad -jid %r" % o.jid)
    o.local, o.domain = local, domain
    if "@" not in o.room or "/" in o.room:
        usage("bad -room %r" % o.room)
    if not o.password:
        usage("-password is required")
    if not o.nick:
        o.nick = local
    if o.n < 1:
        usage("-n must be at least 1")
    if o.window <= 0 or o.window > o.n:
        o.window = o.n
    if not o.addr:
        o.addr = domain + ":5222"
    return o


def xml_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def local_name(qname):
    """The local name of a qualified element name, as str."""
    return qname.rpartition(b":")[2].decode()


class Negotiation:
    """The blocking part: from the TCP connection to the bound resource.

    It keeps what it has read in buf; elements() returns the complete
    top-level elements read so far (reading once more if there are none).
    """

    def __init__(self, sock, timeout):
        self.sock = sock
        self.buf = b""
        self.sock.settimeout(timeout)

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read(self):
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise Failure("the server closed the connection")
        self.buf += data

    def open_stream(self, domain):
        """Sends a stream header and reads the server's."""
        self.send("<?xml version='1.0'?><stream:stream to='%s' version='1.0' xml:lang='en' "
                  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" % xml_escape(domain))
        while True:
            m = HEADER.match(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return
            self.read()

    def element(self):
        """Returns the next top-level element: (local name, start tag
        attributes, whole element), all bytes but the name."""
        while True:
            m = ELEMENT.match(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return local_name(m.group(1)), m.group(2), m.group(0).strip()
            if self.buf.lstrip().startswith(b"</"):
                raise Failure("the server closed the stream")
            self.read()

    def expect(self, *names):
        name, attrs, el = self.element()
        if name not in names:
            raise Failure("expected <%s>, got %s" % ("> or <".join(names), el[:500].decode(errors="replace")))
        return name, attrs, el


def text_of(el):
    """The character data of a simple element such as <challenge>x</challenge>."""
    m = re.search(rb">([^<]*)<", el)
    return m.group(1) if m else b""


def scram_sha1(neg, username, password):
    """SASL SCRAM-SHA-1 (RFC 5802) without channel binding."""
    user = username.replace("=", "=3D").replace(",", "=2C")
    cnonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = "n=%s,r=%s" % (user, cnonce)
    neg.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>%s</auth>"
             % base64.b64encode(("n,," + client_first_bare).encode()).decode())
    name, _, el = neg.expect("challenge", "failure")
    if name == "failure":
        raise Failure("authentication refused: %s" % el.decode(errors="replace"))
    server_first = base64.b64decode(text_of(el)).decode()
    fields = dict(f.split("=", 1) for f in server_first.split(",") if "=" in f)
    nonce, salt, iterations = fields.get("r", ""), fields.get("s", ""), int(fields.get("i", "0"))
    if not nonce.startswith(cnonce) or not salt or iterations < 1:
        raise Failure("bad SCRAM challenge %r" % server_first)
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), base64.b64decode(salt), iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    stored_key = hashlib.sha1(client_key).digest()
    final_without_proof = "c=biws,r=%s" % nonce  # biws: base64 of "n,,"
    auth_message = ",".join((client_first_bare, server_first, final_without_proof)).encode()
    signature = hmac.digest(stored_key, auth_message, "sha1")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    neg.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>" % base64.b64encode(
        ("%s,p=%s" % (final_without_proof, base64.b64encode(proof).decode())).encode()).decode())
    name, _, el = neg.expect("success", "challenge", "failure")
    if name == "failure":
        raise Failure("authentication refused: %s" % el.decode(errors="replace"))
    final = base64.b64decode(text_of(el)).decode()
    if name == "challenge":
        # The server's signature came as a challenge: an empty response
        # asks for the success.
        neg.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        name, _, el = neg.expect("success", "failure")
        if name == "failure":
            raise Failure("authentication refused: %s" % el.decode(errors="replace"))
    server_key = hmac.digest(salted, b"Server Key", "sha1")
    want = "v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha1")).decode()
    if final.split(",")[0] != want:
        raise Failure("the server's SCRAM signature does not match")


def login(o):
    """Connects, negotiates TLS, authenticates and binds a resource; returns
    the TLS socket and any bytes read past the bind result."""
    host, _, port = o.addr.rpartition(":")
    raw_sock = socket.create_connection((host.strip("[]"), int(port)), timeout=o.timeout)
    raw_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    neg = Negotiation(raw_sock, o.timeout)
    neg.open_stream(o.domain)
    _, _, features = neg.expect("features")
    if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
        raise Failure("the server offers no STARTTLS")
    neg.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    neg.expect("proceed")

    ctx = ssl.create_default_context(cafile=o.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    neg.sock = ctx.wrap_socket(raw_sock, server_hostname=o.domain)
    neg.buf = b""
    neg.open_stream(o.domain)
    _, _, features = neg.expect("features")
    if b">SCRAM-SHA-1<" not in features:
        raise Failure("the server does not offer SCRAM-SHA-1: %s" % features.decode(errors="replace"))
    scram_sha1(neg, o.local, o.password)

    neg.open_stream(o.domain)
    _, _, features = neg.expect("features")
    if b"urn:ietf:params:xml:ns:xmpp-bind" not in features:
        raise Failure("the server offers no resource binding")
    neg.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    _, attrs, el = neg.expect("iq")
    if b"type='result'" not in attrs and b'type="result"' not in attrs:
        raise Failure("binding refused: %s" % el.decode(errors="replace"))
    return neg.sock, neg.buf


class Client:
    """The raw client on the logged-in stream.

    From here on the socket is non-blocking and one loop both reads and
    writes, so that sending every message at once never waits on a full
    socket while the reflections pile up on the other side. Reads are
    split into top-level elements (ELEMENT); a message, presence or iq counts
    towards h for <a/>, and an <r/> queues the answer.
    """

    def __init__(self, sock, buf, o):
        self.sock = sock
        self.o = o
        self.buf = buf
        self.out = bytearray()  # bytes waiting for the socket
        self.h = 0  # stanzas received since <enable/>
        self.occupant = ("from='%s/%s'" % (o.room, o.nick)).encode()
        self.last_read = time.monotonic()
        sock.setblocking(False)
        self.poll = select.poll()
        self.poll.register(sock, select.POLLIN)
        self.want_write = False

    def flush(self):
        """Writes what it can of out without blocking."""
        out = self.out
        while out:
            # Retried with the same bytes at the front after a would-block,
            # as OpenSSL requires; out only grows at its end meanwhile.
            try:
                k = self.sock.send(out[:WRITE_SIZE])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                break
            del out[:k]
        want = bool(out)
        if want != self.want_write:
            self.want_write = want
            self.poll.modify(self.sock, select.POLLIN | (select.POLLOUT if want else 0))

    def read(self):
        """Waits for the socket, writes what is pending, reads what there is
        and returns the complete top-level elements as match objects; None
        when nothing came within the timeout."""
        deadline = self.last_read + self.o.timeout
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            ready = 0
            for _, ev in self.poll.poll(wait * 1000):
                ready |= ev
            if ready & select.POLLOUT:
                self.flush()
            if ready & (select.POLLIN | select.POLLERR | select.POLLHUP):
                break  # the read says what the error or hang-up was
        chunks = [self.buf] if self.buf else []
        sock = self.sock
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                raise Failure("the server closed the connection")
            chunks.append(data)
            if not sock.pending():
                break
        self.last_read = time.monotonic()
        els, self.buf = split(b"".join(chunks) if len(chunks) != 1 else chunks[0])
        if not els and self.buf.lstrip().startswith(b"</"):
            raise Failure("the server closed the stream")
        return els

    def count(self, els):
        """Counts the stanzas among els and queues the answers to <r/>."""
        for m in els:
            name = m.group(1)
            if name in (b"message", b"presence", b"iq"):
                self.h += 1
            elif name == b"r":
                self.out += b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % self.h

    def join(self):
        """Enables stream management and joins the room, waiting for our
        self-presence (status 110)."""
        self.out += b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
        self.flush()
        presence = ("<presence to='%s/%s' id='join'><x xmlns='http://jabber.org/protocol/muc'>"
                    "<history maxstanzas='0'/></x></presence>" % (xml_escape(self.o.room), xml_escape(self.o.nick))).encode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            els = self.read()
            if els is None:
                break
            for m in els:
                name, attrs, el = m.group(1), m.group(2), m.group(0)
                if name == b"enabled":
                    self.out += presence
                elif name == b"failed":
                    raise Failure("stream management refused: %s" % el.strip().decode(errors="replace"))
                elif name == b"presence":
                    if b"type='error'" in attrs:
                        raise Failure("join refused: %s" % el.strip().decode(errors="replace"))
                    if self.occupant in attrs and b"code='110'" in el:
                        self.count(els)  # the rest of this read is counted too
                        self.flush()
                        return
            self.count(els)
            self.flush()
        raise Failure("join: no self-presence from the room")

    def send(self, out):
        """Sends the messages, at most window awaiting their reflection, and
        writes the outcomes to out (a text stream)."""
        o = self.o
        n, window = o.n, o.window
        room = xml_escape(o.room).encode()
        ids = ["r%021d" % i for i in range(n)]
        msgs = [b"<message type='groupchat' to='%s' id='%s'><body>message %d</body>"
                b"<origin-id xmlns='urn:xmpp:sid:0' id='o%s'/></message>" % (room, ids[i].encode(), i, ids[i][1:].encode())
                for i in range(n)]
        sent_at = [0] * n
        done = [False] * n
        latencies = []
        states = {}
        lines = []
        occupant = self.occupant
        search_id = OUR_ID.search
        outcomes = 0
        next_i = 0
        in_flight = 0
        last = 0

        def record(i, state, now, detail=None):
            nonlocal outcomes, in_flight, last
            done[i] = True
            outcomes += 1
            in_flight -= 1
            last = now
            lat = (now - sent_at[i]) / 1e6
            if state == DELIVERED:
                latencies.append(lat)
            states[state] = states.get(state, 0) + 1
            if detail is None:
                lines.append('{"index":%d,"id":"%s","state":"%s","latency_ms":%s}\n' % (i, ids[i], state, round(lat, 3)))
            else:
                import json  # only for the rare error line
                lines.append(json.dumps({"index": i, "id": ids[i], "state": state, "latency_ms": round(lat, 3),
                                         "error": detail}, separators=(",", ":")) + "\n")

        cpu0 = time.process_time_ns()
        start = time.monotonic_ns()
        while outcomes < n:
            # Fill the window: everything free goes out in one write.
            if next_i < n and in_flight < window:
                j = min(n, next_i + window - in_flight)
                self.out += b"".join(msgs[next_i:j])
                now = time.monotonic_ns()
                for k in range(next_i, j):
                    sent_at[k] = now
                in_flight += j - next_i
                next_i = j
            if self.out:
                self.flush()
            els = self.read()
            if els is None:
                now = time.monotonic_ns()
                for i in range(n):
                    if not done[i] and i < next_i:
                        record(i, "TIMED_OUT", now)
                for i in range(next_i, n):
                    sent_at[i] = now
                    in_flight += 1
                    record(i, "TIMED_OUT", now)
                break
            now = time.monotonic_ns()
            h = self.h
            for m in els:
                name = m.group(1)
                if name == b"message":
                    h += 1
                    attrs = m.group(2)
                    mid = search_id(attrs)
                    if mid is None:
                        continue
                    i = int(mid.group(1))
                    if i >= n or done[i]:
                        continue
                    if b"type='groupchat'" in attrs and occupant in attrs:
                        record(i, DELIVERED, now)
                    elif b"type='error'" in attrs:
                        record(i, "ERROR", now, m.group(0).strip().decode(errors="replace"))
                elif name == b"r":
                    self.out += b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % h
                elif name == b"presence" or name == b"iq":
                    h += 1
            self.h = h
        cpu = time.process_time_ns() - cpu0
        span = (last - start) / 1e9
        latencies.sort()
        summary = {
            "sent": n,
            "states": states,
            "msgs_per_s": round(n / span, 1) if span > 0 else 0,
            "p50_ms": round(percentile(latencies, 50), 3),
            "p99_ms": round(percentile(latencies, 99), 3),
            "cpu_us_per_msg": round(cpu / 1e3 / n, 2),
            "resumptions": 0,
        }
        lines.append('{"summary":%s}\n' % json_object(summary))
        out.write("".join(lines))
        out.flush()
        # Close the stream without waiting for the server's answer.
        self.out += b"</stream:stream>"
        self.flush()


def split(buf):
    """Returns the complete top-level elements at the start of buf, as
    ELEMENT's match objects, and the bytes after them (an incomplete
    element, to be completed by the next read)."""
    els = []
    pos = 0
    match = ELEMENT.match
    while True:
        m = match(buf, pos)
        if m is None:
            return els, buf[pos:]
        els.append(m)
        pos = m.end()


def percentile(sorted_values, p):
    """The p-th percentile of sorted_values by the nearest-rank method (as
    internal/report), 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = -(-p * len(sorted_values) // 100)  # ceiling
    rank = min(max(int(rank), 1), len(sorted_values))
    return sorted_values[rank - 1]


def json_object(d):
    import json
    return json.dumps(d, separators=(",", ":"))


def main(argv):
    o = parse_args(argv)
    try:
        sock, buf = login(o)
        try:
            c = Client(sock, buf, o)
            c.join()
            c.send(sys.stdout)
        finally:
            sock.close()
    except (Failure, OSError, ValueError) as e:
        print("raw.py: %s" % (e or type(e).__name__), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
