"""Protocol compatibility table: (request bytes, expected reply) as memcached 1.6.18 answers.

Every row was checked against real memcached 1.6.18 (`KEEL_E2E_TARGET=memcached`); the table is
the truth keel-node must match. Each case runs on a fresh connection after `flush_all`, and every
request is followed by an `mn` sentinel: the reply is everything before `MN\\r\\n`, so a server
that sends extra bytes (a noreply that replies) or too few fails the case.

A case is a list of steps (request, expected). `expected` is exact bytes, or a compiled regex of
bytes that must match the whole reply; named groups are captured and substituted as `{name}` into
later requests (CAS uniques differ between servers, so they are captured from `gets`/`mg c`).
"""

from __future__ import annotations

import re
import time

import pytest

R = re.compile
CAS = rb"(?P<cas>\d+)"


def one(req: bytes, exp) -> list:
    return [(req, exp)]


KEY250 = b"k" * 250
KEY251 = b"k" * 251
TOO_LARGE = 2 * 1024 * 1024

CASES: list[tuple[str, list]] = [
    # ---- storage commands
    ("set_get", one(b"set a 5 0 3\r\nabc\r\nget a\r\n", b"STORED\r\nVALUE a 5 3\r\nabc\r\nEND\r\n")),
    ("set_overwrites", one(b"set a 0 0 1\r\nx\r\nset a 7 0 2\r\nyz\r\nget a\r\n",
                           b"STORED\r\nSTORED\r\nVALUE a 7 2\r\nyz\r\nEND\r\n")),
    ("set_flags_u32_max", one(b"set a 4294967295 0 1\r\nx\r\nget a\r\n",
                              b"STORED\r\nVALUE a 4294967295 1\r\nx\r\nEND\r\n")),
    ("set_empty_value", one(b"set a 0 0 0\r\n\r\nget a\r\n", b"STORED\r\nVALUE a 0 0\r\n\r\nEND\r\n")),
    ("set_trailing_spaces", one(b"set a 0 0 1  \r\nx\r\nget a \r\n",
                                b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")),
    ("bare_lf_line_ends", one(b"set a 0 0 1\nx\r\nget a\n", b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")),
    ("key_250_bytes_ok", one(b"set " + KEY250 + b" 0 0 1\r\nx\r\nget " + KEY250 + b"\r\n",
                             b"STORED\r\nVALUE " + KEY250 + b" 0 1\r\nx\r\nEND\r\n")),
    ("add_new_then_existing", one(b"add a 0 0 1\r\nx\r\nadd a 0 0 1\r\ny\r\nget a\r\n",
                                  b"STORED\r\nNOT_STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")),
    ("replace_missing_then_existing",
     one(b"replace a 0 0 1\r\nx\r\nset a 0 0 1\r\nx\r\nreplace a 3 0 1\r\ny\r\nget a\r\n",
         b"NOT_STORED\r\nSTORED\r\nSTORED\r\nVALUE a 3 1\r\ny\r\nEND\r\n")),
    # append/prepend keep the item's flags and ignore the ones given.
    ("append_prepend", one(b"set a 4 0 1\r\nx\r\nappend a 9 0 2\r\nyz\r\nprepend a 9 0 1\r\nw\r\nget a\r\n",
                           b"STORED\r\nSTORED\r\nSTORED\r\nVALUE a 4 4\r\nwxyz\r\nEND\r\n")),
    ("append_prepend_missing", one(b"append a 0 0 1\r\nx\r\nprepend a 0 0 1\r\nx\r\nget a\r\n",
                                   b"NOT_STORED\r\nNOT_STORED\r\nEND\r\n")),
    # ---- cas
    ("cas_ok", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"cas a 2 0 1 {cas}\r\ny\r\nget a\r\n", b"STORED\r\nVALUE a 2 1\r\ny\r\nEND\r\n"),
    ]),
    ("cas_conflict_exists", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"set a 0 0 1\r\nz\r\ncas a 0 0 1 {cas}\r\ny\r\nget a\r\n",
         b"STORED\r\nEXISTS\r\nVALUE a 0 1\r\nz\r\nEND\r\n"),
    ]),
    ("cas_twice_second_exists", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"cas a 0 0 1 {cas}\r\ny\r\ncas a 0 0 1 {cas}\r\nz\r\n", b"STORED\r\nEXISTS\r\n"),
    ]),
    ("cas_not_found", one(b"cas a 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n")),
    # A CAS unique of 0 matches no item (Keel stored it: 0 read as "no compare").
    ("cas_unique_zero_exists", one(b"set a 0 0 1\r\nx\r\ncas a 0 0 1 0\r\ny\r\ncas b 0 0 1 0\r\ny\r\nget a\r\n",
                                   b"STORED\r\nEXISTS\r\nNOT_FOUND\r\nVALUE a 0 1\r\nx\r\nEND\r\n")),
    ("meta_cas_zero_exists", one(b"ms mk 1\r\nx\r\nms mk 1 C0\r\ny\r\nmd mk C0\r\nms mk 1 MA C0\r\nz\r\nmg mk v\r\n",
                                 b"HD\r\nEX\r\nEX\r\nHD\r\nVA 2\r\nxz\r\n")),
    ("cas_changes_on_every_write", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"append a 0 0 1\r\ny\r\ncas a 0 0 1 {cas}\r\nz\r\n", b"STORED\r\nEXISTS\r\n"),
    ]),
    # ---- retrieval
    ("get_multi_order_and_misses",
     one(b"set a 1 0 1\r\nA\r\nset b 2 0 2\r\nBB\r\nget b nope a b nope2\r\n",
         b"STORED\r\nSTORED\r\nVALUE b 2 2\r\nBB\r\nVALUE a 1 1\r\nA\r\nVALUE b 2 2\r\nBB\r\nEND\r\n")),
    ("get_all_missing", one(b"get x y z\r\n", b"END\r\n")),
    ("gets_multi", one(b"set a 0 0 1\r\nA\r\nset b 0 0 1\r\nB\r\ngets b nope a\r\n",
                       R(rb"STORED\r\nSTORED\r\nVALUE b 0 1 \d+\r\nB\r\nVALUE a 0 1 \d+\r\nA\r\nEND\r\n"))),
    ("gets_unique_stable_without_writes", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"gets a\r\n", R(rb"VALUE a 0 1 {cas}\r\nx\r\nEND\r\n")),
    ]),
    ("gat_multi", one(b"set a 0 0 1\r\nA\r\nset b 0 0 1\r\nB\r\ngat 100 b nope a\r\n",
                      b"STORED\r\nSTORED\r\nVALUE b 0 1\r\nB\r\nVALUE a 0 1\r\nA\r\nEND\r\n")),
    ("gats", one(b"set a 3 0 1\r\nA\r\ngats 100 a nope\r\n",
                 R(rb"STORED\r\nVALUE a 3 1 \d+\r\nA\r\nEND\r\n"))),
    ("gat_missing", one(b"gat 10 nope\r\n", b"END\r\n")),
    ("touch", one(b"touch a 10\r\nset a 0 0 1\r\nx\r\ntouch a 10\r\n", b"NOT_FOUND\r\nSTORED\r\nTOUCHED\r\n")),
    ("delete", one(b"set a 0 0 1\r\nx\r\ndelete a\r\ndelete a\r\nget a\r\n",
                   b"STORED\r\nDELETED\r\nNOT_FOUND\r\nEND\r\n")),
    # memcached still accepts the legacy `delete <key> 0`; any other time is an error.
    ("delete_legacy_zero", one(b"set a 0 0 1\r\nx\r\ndelete a 0\r\n", b"STORED\r\nDELETED\r\n")),
    ("delete_with_time", one(b"delete a 5\r\n",
                             b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n")),
    # ---- incr / decr
    ("incr_decr", one(b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 3\r\nget n\r\n",
                      b"STORED\r\n15\r\n12\r\nVALUE n 0 2\r\n12\r\nEND\r\n")),
    ("incr_grows_length", one(b"set n 3 0 1\r\n9\r\nincr n 1\r\nget n\r\n",
                              b"STORED\r\n10\r\nVALUE n 3 2\r\n10\r\nEND\r\n")),
    # memcached rewrites a shorter result in place, padded with spaces to the old length
    # ("99 "); a server that stores the exact digits ("99") is accepted too.
    ("decr_shrinks_length", one(b"set n 0 0 3\r\n100\r\ndecr n 1\r\nget n\r\n",
                                R(rb"STORED\r\n99\r\nVALUE n 0 (3\r\n99 |2\r\n99)\r\nEND\r\n"))),
    ("incr_wraps_at_2_64", one(b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\nget n\r\n",
                               R(rb"STORED\r\n0\r\nVALUE n 0 (20\r\n0 {19}|1\r\n0)\r\nEND\r\n"))),
    ("incr_max_delta", one(b"set n 0 0 1\r\n0\r\nincr n 18446744073709551615\r\n",
                           b"STORED\r\n18446744073709551615\r\n")),
    ("decr_floors_at_0", one(b"set n 0 0 1\r\n5\r\ndecr n 100\r\n", b"STORED\r\n0\r\n")),
    ("incr_missing", one(b"incr n 1\r\ndecr n 1\r\n", b"NOT_FOUND\r\nNOT_FOUND\r\n")),
    ("incr_non_numeric_value",
     one(b"set n 0 0 2\r\nab\r\nincr n 1\r\ndecr n 1\r\n",
         b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
         b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")),
    ("incr_negative_value", one(b"set n 0 0 2\r\n-5\r\nincr n 1\r\n",
                                b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n")),
    ("incr_value_over_u64", one(b"set n 0 0 22\r\n1234567890123456789012\r\nincr n 1\r\n",
                                b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n")),
    ("incr_invalid_delta",
     one(b"set n 0 0 1\r\n1\r\nincr n abc\r\nincr n -1\r\ndecr n x\r\nincr n 18446744073709551616\r\n",
         b"STORED\r\n" + b"CLIENT_ERROR invalid numeric delta argument\r\n" * 4)),
    # ---- flush_all, version, verbosity, mn
    ("flush_all", one(b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\n", b"STORED\r\nOK\r\nEND\r\n")),
    ("flush_all_bad_delay", one(b"flush_all x\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")),
    ("version", one(b"version\r\n", R(rb"VERSION [!-~]+\r\n"))),
    ("verbosity", one(b"verbosity 1\r\nverbosity 0\r\n", b"OK\r\nOK\r\n")),
    ("verbosity_missing_arg", one(b"verbosity\r\n", b"ERROR\r\n")),
    ("verbosity_bad_arg", one(b"verbosity x\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    # ---- noreply: no bytes at all, then a following command shows the effect
    ("noreply_storage",
     one(b"set a 0 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nadd b 0 0 1 noreply\r\nB\r\n"
         b"replace a 0 0 1 noreply\r\nz\r\nappend a 0 0 1 noreply\r\nq\r\nprepend a 0 0 1 noreply\r\np\r\n"
         b"get a b\r\n",
         b"VALUE a 0 3\r\npzq\r\nVALUE b 0 1\r\nB\r\nEND\r\n")),
    ("noreply_failures_are_silent_too",
     one(b"add a 0 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nreplace nope 0 0 1 noreply\r\nz\r\n"
         b"delete nope noreply\r\nincr nope 1 noreply\r\ntouch nope 1 noreply\r\nget a nope\r\n",
         b"VALUE a 0 1\r\nx\r\nEND\r\n")),
    ("noreply_cas", [
        (b"set a 0 0 1\r\nx\r\ngets a\r\n", R(rb"STORED\r\nVALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"cas a 0 0 1 {cas} noreply\r\ny\r\ncas a 0 0 1 {cas} noreply\r\nz\r\nget a\r\n",
         b"VALUE a 0 1\r\ny\r\nEND\r\n"),
    ]),
    ("noreply_incr_decr", one(b"set c 0 0 1\r\n5\r\nincr c 3 noreply\r\ndecr c 1 noreply\r\nget c\r\n",
                              b"STORED\r\nVALUE c 0 1\r\n7\r\nEND\r\n")),
    ("noreply_delete_touch", one(b"set a 0 0 1\r\nx\r\ntouch a 100 noreply\r\ndelete a noreply\r\nget a\r\n",
                                 b"STORED\r\nEND\r\n")),
    ("noreply_flush_verbosity", one(b"set a 0 0 1\r\nx\r\nverbosity 1 noreply\r\nflush_all noreply\r\nget a\r\n",
                                    b"STORED\r\nEND\r\n")),
    ("noreply_flush_with_delay", one(b"flush_all 0 noreply\r\n", b"")),
    # ---- meta commands
    ("ms_mg_all_flags", one(b"ms mk 2 T0 F5\r\nhi\r\nmg mk v k t f c s\r\n",
                            R(rb"HD\r\nVA 2 kmk t-1 f5 c\d+ s2\r\nhi\r\n"))),
    ("mg_hit_no_flags", one(b"ms mk 2\r\nhi\r\nmg mk\r\n", b"HD\r\nHD\r\n")),
    ("mg_miss", one(b"mg nope v\r\nmg nope\r\n", b"EN\r\nEN\r\n")),
    ("mg_miss_reflects_O_k", one(b"mg nope v O9 k\r\n", b"EN O9 knope\r\n")),
    ("mg_opaque", one(b"ms mk 2\r\nhi\r\nmg mk O123 k v\r\n", b"HD\r\nVA 2 O123 kmk\r\nhi\r\n")),
    ("mg_quiet", one(b"ms mk 2\r\nhi\r\nmg mk v q\r\nmg nope v q\r\n", b"HD\r\nVA 2\r\nhi\r\n")),
    ("mg_cas_matches_gets", [
        (b"ms mk 2\r\nhi\r\nmg mk c\r\n", R(rb"HD\r\nHD c" + CAS + rb"\r\n")),
        (b"gets mk\r\n", R(rb"VALUE mk 0 2 {cas}\r\nhi\r\nEND\r\n")),
    ]),
    ("mg_ttl", one(b"ms tt 1 T100\r\nx\r\nmg tt t v\r\nmg tt T50 t\r\nmg tt t\r\n",
                   b"HD\r\nVA 1 t100\r\nx\r\nHD t50\r\nHD t50\r\n")),
    ("mg_vivify_N", one(b"mg nf N30 v t\r\nmg nf v t\r\n",
                        b"VA 0 t30 W\r\n\r\nVA 0 t30 Z\r\n\r\n")),
    # h: fetched before this request (0/1); l: seconds since the last access (both were always
    # 0 on Keel). `l` may read 1 if a second ticks between the requests.
    ("mg_hit_before_h_l", one(b"ms mk 1\r\nx\r\nmg mk h l t\r\nmg mk h l\r\n",
                              R(rb"HD\r\nHD h0 l[01] t-1\r\nHD h1 l[01]\r\n"))),
    # u reads without counting as a fetch; get and touch count; a rewrite starts afresh.
    ("mg_h_u_get_touch", one(b"ms mk 1\r\nx\r\nmg mk h u\r\nmg mk h\r\nget mk\r\nmg mk h\r\n"
                             b"set mk 0 0 1\r\ny\r\ntouch mk 10\r\nmg mk h\r\nset mk 0 0 1\r\nz\r\nmg mk h\r\n",
                             b"HD\r\nHD h0\r\nHD h0\r\nVALUE mk 0 1\r\nx\r\nEND\r\nHD h1\r\n"
                             b"STORED\r\nTOUCHED\r\nHD h1\r\nSTORED\r\nHD h0\r\n")),
    # R: the first reader of an item that expires within R's TTL wins the recache token (W),
    # later readers see Z; an item without a TTL never does.
    ("mg_recache_R", one(b"ms mk 1 T100\r\nx\r\nmg mk R30 v\r\nmg mk R200 v\r\nmg mk R200 v\r\n"
                         b"ms nt 1\r\nx\r\nmg nt R200\r\n",
                         b"HD\r\nVA 1\r\nx\r\nVA 1 W\r\nx\r\nVA 1 Z\r\nx\r\nHD\r\nHD\r\n")),
    ("ms_quiet_and_opaque", one(b"ms mk 2 q\r\nhi\r\nms mk 2 O5\r\nhi\r\nms mk 2 q ME\r\nhi\r\n",
                                b"HD O5\r\nNS\r\n")),
    ("ms_return_cas", one(b"ms mk 2 c\r\nhi\r\n", R(rb"HD c\d+\r\n"))),
    ("ms_modes",
     one(b"ms mk 1\r\nx\r\nms mk 1 MA\r\nA\r\nms mk 1 MP\r\nP\r\nmg mk v\r\n"
         b"ms mk 1 ME\r\nE\r\nms new1 1 ME\r\nE\r\nms nope 1 MR\r\nR\r\nms mk 1 MR\r\nR\r\n"
         b"mg mk v\r\nms mk 1 MS\r\nS\r\nmg mk v\r\nms nope2 1 MA\r\nx\r\nms nope3 1 MP\r\nx\r\n",
         b"HD\r\nHD\r\nHD\r\nVA 3\r\nPxA\r\nNS\r\nHD\r\nNS\r\nHD\r\nVA 1\r\nR\r\nHD\r\nVA 1\r\nS\r\n"
         b"NS\r\nNS\r\n")),
    ("ms_cas_compare", [
        (b"ms mk 1\r\nx\r\nmg mk c\r\n", R(rb"HD\r\nHD c" + CAS + rb"\r\n")),
        (b"ms mk 1 C{cas}\r\ny\r\nms mk 1 C{cas}\r\nz\r\nms gone 1 C1\r\nz\r\nmg mk v\r\n",
         b"HD\r\nEX\r\nNF\r\nVA 1\r\ny\r\n"),
    ]),
    ("ms_flags_and_invalid_ttl", one(b"ms mk 1 F7 T-1\r\nx\r\nmg mk v\r\n", b"HD\r\nEN\r\n")),
    # md I marks the item stale (X); the first fetch wins the right to recache (W), later ones see
    # Z, in memcached's order: Z, X, W.
    ("ms_invalidate_I", one(b"ms mk 2\r\nhi\r\nmd mk I\r\nmg mk v\r\nmg mk v\r\n",
                            b"HD\r\nHD\r\nVA 2 X W\r\nhi\r\nVA 2 Z X\r\nhi\r\n")),
    # md I again hands the token back: the next reader wins again.
    ("md_invalidate_again_rewins", one(b"ms mk 1\r\nx\r\nmd mk I\r\nmg mk\r\nmd mk I\r\nmg mk\r\nmg mk\r\n",
                                       b"HD\r\nHD\r\nHD X W\r\nHD\r\nHD X W\r\nHD Z X\r\n")),
    # ms I with an older CAS stores the value stale, keeping the item's TTL and a token already
    # sent; in append/prepend mode an older CAS is just a mismatch (EX).
    ("ms_invalidate_older_cas", [
        (b"ms mk 1 T100\r\nx\r\nmg mk c\r\n", R(rb"HD\r\nHD c" + CAS + rb"\r\n")),
        (b"ms mk 1 T100\r\ny\r\nmg mk v\r\nms mk 1 C{cas} I MA\r\nz\r\nms mk 1 C{cas} I T5\r\nz\r\nmg mk v t\r\n",
         R(rb"HD\r\nVA 1\r\ny\r\nEX\r\nHD\r\nVA 1 t(100|99) X W\r\nz\r\n")),
    ]),
    ("ms_invalidate_keeps_token", [
        (b"ms mk 1\r\nx\r\nmg mk c\r\n", R(rb"HD\r\nHD c" + CAS + rb"\r\n")),
        (b"md mk I\r\nmg mk v\r\nms mk 1 C{cas} I\r\nz\r\nmg mk v\r\n",
         b"HD\r\nVA 1 X W\r\nx\r\nHD\r\nVA 1 Z X\r\nz\r\n"),
    ]),
    # b: the key is base64, decoded for storage and lookup and echoed re-encoded with " b".
    ("meta_base64_key", one(b"ms Zm9v 1 b\r\nx\r\nmg Zm9v b k v\r\nget foo\r\nmd Zg== b q\r\nmg Zm9 b\r\n",
                            b"HD\r\nVA 1 kZm9v b\r\nx\r\nVALUE foo 0 1\r\nx\r\nEND\r\nNF\r\n"
                            b"CLIENT_ERROR error decoding key\r\n")),
    # me: one line of an item's metadata (memcached's slab class and item size are its own).
    ("me_debug", one(b"me nope\r\nset mk 0 0 1\r\nx\r\nme mk\r\nme\r\n",
                     R(rb"EN\r\nSTORED\r\nME mk exp=-1 la=[01] cas=\d+ fetch=no cls=\d+ size=\d+\r\n"
                       rb"CLIENT_ERROR bad command line format\r\n"))),
    ("md", one(b"ms mk 1\r\nx\r\nmd mk\r\nmd mk\r\nmg mk v\r\n", b"HD\r\nHD\r\nNF\r\nEN\r\n")),
    # q hides HD for md, but a miss (NF) is still reported.
    ("md_quiet", one(b"ms mk 1\r\nx\r\nmd mk q\r\nmd mk q\r\n", b"HD\r\nNF\r\n")),
    ("md_cas_mismatch", one(b"ms mk 1\r\nx\r\nmd mk C1\r\nmg mk v\r\n", b"HD\r\nEX\r\nVA 1\r\nx\r\n")),
    ("md_opaque_key", one(b"ms mk 1\r\nx\r\nmd mk O7 k\r\n", b"HD\r\nHD O7 kmk\r\n")),
    ("ma", one(b"ms cnt 1\r\n5\r\nma cnt\r\nma cnt v\r\nmg cnt v\r\n",
               b"HD\r\nHD\r\nVA 1\r\n7\r\nVA 1\r\n7\r\n")),
    ("ma_missing", one(b"ma cnt\r\nma cnt q\r\n", b"NF\r\nNF\r\n")),
    ("ma_quiet_hit", one(b"ms cnt 1\r\n1\r\nma cnt q\r\nmg cnt v\r\n", b"HD\r\nVA 1\r\n2\r\n")),
    # N auto-creates with J as the initial value (returned as is, not incremented).
    ("ma_N_J", one(b"ma cnt N0 J13 v\r\nma cnt v\r\n", b"VA 2\r\n13\r\nVA 2\r\n14\r\n")),
    ("ma_D_MD_MI", one(b"ma cnt N0 J13\r\nma cnt v D6\r\nma cnt MD v D5\r\nma cnt MD D100 v\r\nma cnt MI D3 v t\r\n",
                       b"HD\r\nVA 2\r\n19\r\nVA 2\r\n14\r\nVA 1\r\n0\r\nVA 1 t-1\r\n3\r\n")),
    ("ma_cas", one(b"ms cnt 1\r\n1\r\nma cnt c v\r\n", R(rb"HD\r\nVA 1 c\d+\r\n2\r\n"))),
    ("ma_non_numeric", one(b"ms cnt 1\r\nz\r\nma cnt\r\n",
                           b"HD\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n")),
    ("ma_bad_mode", one(b"ma cnt MX\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n")),
    ("ms_bad_mode", one(b"ms mk 2 MZ\r\nhi\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n")),
    ("mg_bad_flag", one(b"mg mk v Z\r\n", b"CLIENT_ERROR invalid flag\r\n")),
    ("ms_missing_size", one(b"ms mk\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    ("ms_non_numeric_size", one(b"ms mk x\r\nhi\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    ("meta_missing_key", one(b"mg\r\nmd\r\nma\r\n", b"ERROR\r\nERROR\r\nERROR\r\n")),
    ("mg_key_too_long", one(b"mg " + KEY251 + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    # ---- malformed input
    ("unknown_command", one(b"foo bar\r\n", b"ERROR\r\n")),
    # An HTTP request line closes the connection (test_http_request_closes_connection), but only
    # for commands outside memcached's g/s/a/c/i/d/t groups; inside one it is plain ERROR.
    ("http_inside_command_group", one(b"sxx / HTTP/1.1\r\ngxx HTTP/1.0\r\n", b"ERROR\r\nERROR\r\n")),
    ("commands_are_case_sensitive", one(b"GET a\r\n", b"ERROR\r\n")),
    ("empty_line", one(b"\r\n", b"ERROR\r\n")),
    ("get_key_too_long", one(b"get " + KEY251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    ("delete_key_too_long", one(b"delete " + KEY251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    # A rejected set command line does not swallow its data line: "x" is read as a command.
    ("set_key_too_long", one(b"set " + KEY251 + b" 0 0 1\r\nx\r\n",
                             b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    # The data block is read by length; if it does not end in \r\n the rest is parsed as commands.
    ("bad_data_chunk_longer", one(b"set a 0 0 3\r\nabcde\r\nget a\r\n",
                                  b"CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n")),
    ("bad_data_chunk_shorter", one(b"set a 0 0 1\r\nab\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")),
    # The value is swallowed and the connection keeps working.
    ("value_too_large", one(b"set big 0 0 %d\r\n" % TOO_LARGE + b"v" * TOO_LARGE + b"\r\nget big\r\n",
                            b"SERVER_ERROR object too large for cache\r\nEND\r\n")),
    ("non_numeric_flags", one(b"set a x 0 1\r\nz\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    ("non_numeric_exptime", one(b"set a 0 x 1\r\nz\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    ("negative_flags", one(b"set a -1 0 1\r\nz\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    ("negative_length", one(b"set a 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n")),
    ("non_numeric_cas", one(b"cas a 0 0 1 x\r\nz\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")),
    ("touch_bad_exptime", one(b"touch a x\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")),
    ("gat_bad_exptime", one(b"gat x a\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")),
    ("missing_args", one(b"get\r\nset a 0 0\r\nincr a\r\ndecr\r\ntouch a\r\ndelete\r\ngat\r\n",
                         b"ERROR\r\n" * 7)),
    ("cas_missing_unique", one(b"cas a 0 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\n")),
]


def _subst(req: bytes, captured: dict[str, bytes]) -> bytes:
    for name, value in captured.items():
        req = req.replace(b"{" + name.encode() + b"}", value)
    return req


def _pattern(exp: re.Pattern, captured: dict[str, bytes]) -> re.Pattern:
    src = exp.pattern
    for name, value in captured.items():
        src = src.replace(b"{" + name.encode() + b"}", re.escape(value))
    return re.compile(src, exp.flags)


def _flush(server):
    with server.connect() as c:
        c.send(b"flush_all\r\n")
        assert c.read_line() == b"OK\r\n"


@pytest.mark.parametrize("steps", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_protocol_case(server, steps):
    _flush(server)
    captured: dict[str, bytes] = {}
    with server.connect() as c:
        for req, exp in steps:
            req = _subst(req, captured)
            got = c.call(req)
            if isinstance(exp, re.Pattern):
                m = _pattern(exp, captured).fullmatch(got)
                assert m, f"request {req[:200]!r}\n reply {got[:400]!r}\n  want {exp.pattern!r}"
                captured.update({k: v for k, v in m.groupdict().items() if v is not None})
            else:
                assert got == exp, f"request {req[:200]!r}"


def test_case_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_mn(server):
    """`mn` answers MN (the table's sentinel relies on it, so it is checked on its own here)."""
    with server.connect() as c:
        c.send(b"mn\r\n")
        assert c.read_line() == b"MN\r\n"
        c.send(b"mn\r\nmn\r\nversion\r\n")
        assert c.read_line() == b"MN\r\n"
        assert c.read_line() == b"MN\r\n"
        assert c.read_line().startswith(b"VERSION ")


def test_quit_closes_connection(server):
    with server.connect() as c:
        c.send(b"quit\r\n")
        assert c.read_to_eof() == b""
    # The server itself is fine.
    with server.connect() as c:
        assert c.call(b"version\r\n").startswith(b"VERSION ")


def test_http_request_closes_connection(server):
    """An HTTP client on the memcached port is closed without a reply (Keel answered ERROR and
    kept reading the headers as commands); replies to earlier commands are still sent."""
    for line in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"foo bar HTTP/1.0\r\n"):
        with server.connect() as c:
            c.send(line)
            assert c.read_to_eof() == b""
    with server.connect() as c:
        assert c.call(b"version\r\n").startswith(b"VERSION ")
        c.send(b"POST /x HTTP/1.1\r\nversion\r\n")
        assert c.read_to_eof() == b""


def test_quit_after_pipelined_commands(server):
    """Replies to commands before `quit` are sent, nothing after it is run."""
    with server.connect() as c:
        c.send(b"set qk 0 0 1\r\nx\r\nquit\r\nset qk 0 0 1\r\ny\r\n")
        assert c.read_to_eof() == b"STORED\r\n"
    with server.connect() as c:
        assert c.get("qk") == b"x"


def test_too_large_value_then_connection_works(server):
    """After SERVER_ERROR object too large, the same connection stores and reads normally."""
    with server.connect() as c:
        n = TOO_LARGE
        c.send(b"set big2 0 0 %d\r\n" % n + b"v" * n + b"\r\n")
        assert c.read_line() == b"SERVER_ERROR object too large for cache\r\n"
        assert c.set("after", b"ok") == b"STORED\r\n"
        assert c.get("after") == b"ok"
        assert c.get("big2") is None


def test_flush_all_with_delay(fresh_server):
    """`flush_all N` answers OK at once, keeps items for now, and drops them once N s have passed."""
    with fresh_server.connect() as c:
        assert c.set("fa", b"x") == b"STORED\r\n"
        assert c.call(b"flush_all 2\r\n") == b"OK\r\n"
        assert c.get("fa") == b"x", "flush_all with a delay must not flush at once"
        deadline = time.monotonic() + 8.0
        while c.get("fa") is not None:
            assert time.monotonic() < deadline, "item still there 8 s after flush_all 2"
            time.sleep(0.1)  # polling for a time-based effect, bounded by the deadline
