"""The client side of two wire protocols, parsed for counting (scripts/wire_count.py):
PostgreSQL's frontend messages and Redis's requests. A stream object per connection is fed
the client's bytes in order, in chunks of any size, and adds what they held to a Tally."""

import re
from collections import Counter
from dataclasses import dataclass, field

TEXT_CHARS = 200

# Untyped first messages of the PostgreSQL protocol (their "protocol version" codes).
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
# Frontend messages whose payload is read; the others are only skipped over.
_PARSED_MESSAGES = frozenset(b"QPBE")


class ProtocolError(ValueError):
    """Bytes that are not the protocol the proxy expects."""


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def _identifier_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _quoted_end(sql: str, start: int, quote: str, backslash_escapes: bool) -> int:
    """The index just past the string or identifier opened at `start` (a doubled quote
    stays inside; so does a backslash-escaped one in an E'' string)."""
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if backslash_escapes and char == "\\":
            index += 2
            continue
        if char == quote:
            if sql.startswith(quote * 2, index):
                index += 2
                continue
            return index + 1
        index += 1
    return len(sql)


def _block_comment_end(sql: str, start: int) -> int:
    depth, index = 0, start
    while index < len(sql):
        if sql.startswith("/*", index):
            depth, index = depth + 1, index + 2
        elif sql.startswith("*/", index):
            depth, index = depth - 1, index + 2
            if depth == 0:
                return index
        else:
            index += 1
    return len(sql)


def sql_statements(sql: str) -> list[str]:
    """The statements of a simple query, split at the semicolons outside quotes, dollar
    quotes and comments; empty statements (only blanks or comments) are left out."""
    statements: list[str] = []
    start = index = 0
    has_code = False
    while index < len(sql):
        char = sql[index]
        following = index + 1
        if char == "'":
            previous = sql[index - 1] if index else ""
            before_previous = sql[index - 2] if index > 1 else ""
            escapes = previous in ("e", "E") and not _identifier_char(before_previous)
            following = _quoted_end(sql, index, "'", escapes)
        elif char == '"':
            following = _quoted_end(sql, index, '"', False)
        elif sql.startswith("--", index):
            newline = sql.find("\n", index)
            following = len(sql) if newline < 0 else newline + 1
        elif sql.startswith("/*", index):
            following = _block_comment_end(sql, index)
        elif char == "$" and not (index and _identifier_char(sql[index - 1])):
            tag = _DOLLAR_TAG.match(sql, index)
            if tag is not None:
                close = sql.find(tag.group(), tag.end())
                following = len(sql) if close < 0 else close + len(tag.group())
        elif char == ";":
            if has_code:
                statements.append(sql[start:index].strip())
            start, has_code = following, False
        if not (char.isspace() or char == ";" or sql.startswith(("--", "/*"), index)):
            has_code = True
        index = following
    if has_code:
        statements.append(sql[start:].strip())
    return statements


@dataclass
class Tally:
    """What one chunk of client bytes held; applied to the proxy's totals under its lock."""

    statements: int = 0
    round_trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    texts: list[str] = field(default_factory=list)


def _c_string(payload: bytes, offset: int) -> tuple[str, int]:
    end = payload.find(b"\0", offset)
    if end < 0:
        raise ProtocolError("unterminated string")
    return payload[offset:end].decode("utf-8", "replace"), end + 1


class PostgresStream:
    """The frontend side of one PostgreSQL connection."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.untyped_next = True  # the startup message, SSLRequest or CancelRequest
        self.skip = 0  # payload bytes of an unparsed message still to pass over
        self.awaiting_encryption_answer = False
        self.prepared: dict[str, str] = {}  # statement name -> text
        self.portals: dict[str, str] = {}  # portal name -> statement text

    def feed(self, data: bytes, tally: Tally) -> None:
        if self.skip:
            passed = min(self.skip, len(data))
            self.skip -= passed
            data = data[passed:]
        self.buffer += data
        while self._next_message(tally):
            pass

    def _next_message(self, tally: Tally) -> bool:
        buffer = self.buffer
        if self.untyped_next:
            if len(buffer) < 8:
                return False
            length = int.from_bytes(buffer[0:4], "big")
            if length < 8 or len(buffer) < length:
                if length < 8:
                    raise ProtocolError(f"startup message of {length} bytes")
                return False
            code = int.from_bytes(buffer[4:8], "big")
            del buffer[:length]
            # After SSLRequest / GSSENCRequest the server answers one byte and the client
            # sends its startup message (untyped again), unless encryption was accepted.
            self.awaiting_encryption_answer = code in (_SSL_REQUEST, _GSSENC_REQUEST)
            self.untyped_next = self.awaiting_encryption_answer
            if code == _CANCEL_REQUEST:
                tally.messages["cancel"] += 1
            return True
        if len(buffer) < 5:
            return False
        kind = buffer[0]
        length = int.from_bytes(buffer[1:5], "big")
        if length < 4:
            raise ProtocolError(f"message {chr(kind)!r} of length {length}")
        payload = b""
        if kind in _PARSED_MESSAGES:
            if len(buffer) < 1 + length:
                return False
            payload = bytes(buffer[5 : 1 + length])
            del buffer[: 1 + length]
        elif len(buffer) >= 1 + length:
            del buffer[: 1 + length]
        else:
            # Passed over as it arrives, never held: COPY data can be large.
            self.skip = 1 + length - len(buffer)
            buffer.clear()
        letter = chr(kind)
        tally.messages[letter] += 1
        self._message(letter, payload, tally)
        return True

    def _message(self, letter: str, payload: bytes, tally: Tally) -> None:
        if letter == "Q":
            query, _ = _c_string(payload, 0)
            statements = sql_statements(query)
            tally.statements += len(statements)
            tally.round_trips += 1
            tally.texts.extend(statement[:TEXT_CHARS] for statement in statements)
        elif letter == "P":
            name, offset = _c_string(payload, 0)
            self.prepared[name], _ = _c_string(payload, offset)
        elif letter == "B":
            portal, offset = _c_string(payload, 0)
            statement, _ = _c_string(payload, offset)
            self.portals[portal] = self.prepared.get(statement, f"<prepared {statement!r}>")
        elif letter == "E":
            portal, _ = _c_string(payload, 0)
            tally.statements += 1
            tally.texts.append(self.portals.get(portal, f"<portal {portal!r}>")[:TEXT_CHARS])
        elif letter == "S":
            tally.round_trips += 1

    def server_answered(self, first_byte: int) -> bool:
        """Called with the first byte the server sends after an SSLRequest or
        GSSENCRequest; False when the connection goes encrypted and cannot be parsed."""
        self.awaiting_encryption_answer = False
        return first_byte == ord("N")


class RedisStream:
    """The request side of one Redis connection (RESP arrays and inline commands)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes, tally: Tally) -> None:
        self.buffer += data
        while (command := self._next_command()) is not None:
            if not command:
                continue
            name = command[0].decode("utf-8", "replace").upper()
            tally.commands[name] += 1
            text = " ".join(part.decode("utf-8", "replace") for part in command)
            tally.texts.append(text[:TEXT_CHARS])

    def _line(self, offset: int) -> tuple[bytes, int] | None:
        end = self.buffer.find(b"\r\n", offset)
        if end < 0:
            return None
        return bytes(self.buffer[offset:end]), end + 2

    def _next_command(self) -> list[bytes] | None:
        """The next whole command ([] for an empty or null request), None if incomplete."""
        buffer = self.buffer
        if not buffer:
            return None
        if buffer[0] != ord("*"):
            newline = buffer.find(b"\n")
            if newline < 0:
                return None
            line = bytes(buffer[:newline]).strip()
            del buffer[: newline + 1]
            return line.split()
        header = self._line(0)
        if header is None:
            return None
        count_text, offset = header
        count = int(count_text[1:])
        parts: list[bytes] = []
        for _ in range(max(count, 0)):
            length_line = self._line(offset)
            if length_line is None:
                return None
            length_text, offset = length_line
            if not length_text.startswith(b"$"):
                raise ProtocolError(f"expected a bulk string, got {length_text[:20]!r}")
            length = int(length_text[1:])
            if len(buffer) < offset + length + 2:
                return None
            parts.append(bytes(buffer[offset : offset + length]))
            offset += length + 2
        del buffer[:offset]
        return parts
