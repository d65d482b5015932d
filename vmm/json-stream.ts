// QMP's JSON stream, read as QEMU reads it (qobject/json-lexer.c, json-streamer.c, json-parser.c):
// a byte-level lexer, a streamer that cuts the token stream into messages where the braces and
// brackets balance (no newlines needed; several messages per read, one message over many), and a
// parser per message. A lexical error gives an error at once and skips to the next structural
// character or line end; a grammar error gives one error when its message ends. QEMU's extensions
// are kept: single-quoted strings, modified UTF-8 ("\xC0\x80" is NUL).

/** Largest message accepted (QEMU: 64 MiB); the rest of a longer one is skipped after one error. */
export const MAX_MESSAGE = 1 << 20;
/** Deepest accepted nesting (QEMU's MAX_NESTING); deeper input is skipped after one error. */
export const MAX_NESTING = 1024;

const enum S { START, RECOVERY, DQ, DQ_ESC, SQ, SQ_ESC, ZERO, EXP_DIGITS, EXP_SIGN, EXP_E, MANTISSA, MANTISSA_DIGITS, DIGITS, SIGN, KEYWORD }
const enum T { LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA, INTEGER, FLOAT, KEYWORD, STRING }
interface Token { type: T; text?: Buffer }

const STRUCTURAL: Record<number, T> = { 0x7b: T.LCURLY, 0x7d: T.RCURLY, 0x5b: T.LSQUARE, 0x5d: T.RSQUARE, 0x3a: T.COLON, 0x2c: T.COMMA };
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isWhitespace = (b: number) => b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0a;
/** Where lexical error recovery resumes: structural characters, control characters but tab, 0xFE/0xFF. */
const resyncs = (b: number) => (b < 0x20 && b !== 0x09) || b >= 0xfe || b === 0x5b || b === 0x5d || b === 0x7b || b === 0x7d || b === 0x3a || b === 0x2c;

/** Receives each message: its value, or the error reply's description. */
export type MessageSink = (value: unknown, error?: string) => void;

export class JsonMessageReader {
  private state = S.START;
  /** The token being lexed: bytes from earlier chunks, and where it starts in the current one. */
  private parts: Buffer[] = [];
  private partsLen = 0;
  private tokens: Token[] = [];
  private size = 0;
  private braces = 0;
  private brackets = 0;
  /** After a limit error: the rest of that message is lexed and counted, not kept or answered. */
  private skipping = false;

  constructor(private readonly sink: MessageSink, private readonly maxMessage = MAX_MESSAGE) {}

  feed(chunk: Buffer): void {
    let start = 0; // where the current token starts in `chunk`
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      const b = chunk[i];
      switch (this.state) {
        case S.START:
          if (isWhitespace(b)) { i++; start = i; continue; }
          start = i;
          if (b === 0x22) this.state = S.DQ;
          else if (b === 0x27) this.state = S.SQ;
          else if (b === 0x30) this.state = S.ZERO;
          else if (b >= 0x31 && b <= 0x39) this.state = S.DIGITS;
          else if (b === 0x2d) this.state = S.SIGN;
          else if (b >= 0x61 && b <= 0x7a) this.state = S.KEYWORD;
          else if (STRUCTURAL[b] !== undefined) { i++; this.token(STRUCTURAL[b]); start = i; continue; }
          else { i++; this.lexError(chunk, start, i); continue; }
          i++;
          continue;
        case S.RECOVERY:
          if (resyncs(b)) { this.state = S.START; start = i; continue; } // look-ahead: b starts afresh
          i++;
          continue;
        case S.DQ: case S.SQ: {
          // The hot path: run through plain string bytes.
          const quote = this.state === S.DQ ? 0x22 : 0x27;
          while (i < n) {
            const c = chunk[i];
            if (c < 0x20 || c >= 0xfe || c === quote || c === 0x5c) break;
            i++;
          }
          if (i === n) continue;
          const c = chunk[i++];
          if (c === quote) { this.token(T.STRING, chunk, start, i); start = i; }
          else if (c === 0x5c) this.state = this.state === S.DQ ? S.DQ_ESC : S.SQ_ESC;
          else this.lexError(chunk, start, i);
          continue;
        }
        case S.DQ_ESC: case S.SQ_ESC:
          i++;
          if (b >= 0x20 && b < 0xfe) this.state = this.state === S.DQ_ESC ? S.DQ : S.SQ;
          else this.lexError(chunk, start, i);
          continue;
        case S.ZERO:
          if (isDigit(b)) { i++; this.lexError(chunk, start, i); continue; }
          if (b === 0x2e) { i++; this.state = S.MANTISSA; continue; }
          this.token(T.INTEGER, chunk, start, i); start = i; // look-ahead
          continue;
        case S.DIGITS:
          if (isDigit(b)) { i++; continue; }
          if (b === 0x65 || b === 0x45) { i++; this.state = S.EXP_E; continue; }
          if (b === 0x2e) { i++; this.state = S.MANTISSA; continue; }
          this.token(T.INTEGER, chunk, start, i); start = i;
          continue;
        case S.SIGN:
          i++;
          if (b === 0x30) this.state = S.ZERO;
          else if (b >= 0x31 && b <= 0x39) this.state = S.DIGITS;
          else this.lexError(chunk, start, i);
          continue;
        case S.MANTISSA:
          i++;
          if (isDigit(b)) this.state = S.MANTISSA_DIGITS;
          else this.lexError(chunk, start, i);
          continue;
        case S.MANTISSA_DIGITS:
          if (isDigit(b)) { i++; continue; }
          if (b === 0x65 || b === 0x45) { i++; this.state = S.EXP_E; continue; }
          this.token(T.FLOAT, chunk, start, i); start = i;
          continue;
        case S.EXP_E:
          i++;
          if (b === 0x2b || b === 0x2d) this.state = S.EXP_SIGN;
          else if (isDigit(b)) this.state = S.EXP_DIGITS;
          else this.lexError(chunk, start, i);
          continue;
        case S.EXP_SIGN:
          i++;
          if (isDigit(b)) this.state = S.EXP_DIGITS;
          else this.lexError(chunk, start, i);
          continue;
        case S.EXP_DIGITS:
          if (isDigit(b)) { i++; continue; }
          this.token(T.FLOAT, chunk, start, i); start = i;
          continue;
        case S.KEYWORD:
          if (b >= 0x61 && b <= 0x7a) { i++; continue; }
          this.token(T.KEYWORD, chunk, start, i); start = i;
          continue;
      }
    }
    // A token left open continues in the next chunk.
    if (this.state !== S.START && this.state !== S.RECOVERY) {
      if (!this.skipping) this.parts.push(chunk.subarray(start));
      this.partsLen += n - start;
      if (!this.skipping && this.size + this.partsLen > this.maxMessage) this.tooLong();
    }
  }

  /** The token's bytes (earlier chunks' parts, then chunk[start, end)), and the state reset. */
  private take(chunk?: Buffer, start = 0, end = 0): Buffer {
    const tail = chunk ? chunk.subarray(start, end) : Buffer.alloc(0);
    const text = this.parts.length ? Buffer.concat([...this.parts, tail]) : tail;
    this.parts = [];
    this.partsLen = 0;
    this.state = S.START;
    return text;
  }

  private lexError(chunk: Buffer, start: number, end: number): void {
    const text = this.take(chunk, start, end);
    this.state = S.RECOVERY;
    // QEMU quotes the whole token; a long one is cut in the middle, keeping the offending end.
    const shown = text.length > 100 ? `${text.subarray(0, 40).toString('utf8')}...${text.subarray(-40).toString('utf8')}` : text.toString('utf8');
    this.reset();
    this.sink(undefined, `JSON parse error, stray '${shown}'`);
  }

  private token(type: T, chunk?: Buffer, start = 0, end = 0): void {
    const text = type >= T.INTEGER ? this.take(chunk, start, end) : undefined;
    this.state = S.START;
    if (type === T.LCURLY) this.braces++;
    else if (type === T.RCURLY) this.braces--;
    else if (type === T.LSQUARE) this.brackets++;
    else if (type === T.RSQUARE) this.brackets--;
    const open = (this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0;
    if (this.skipping) { if (!open) this.reset(); return; }
    this.size += (text?.length ?? 1) + 1;
    if (this.size > this.maxMessage) { this.tooLong(); if (!open) this.reset(); return; }
    if (this.braces + this.brackets > MAX_NESTING) {
      this.skip('JSON nesting depth limit exceeded');
      return;
    }
    this.tokens.push({ type, text });
    if (open) return;
    const tokens = this.tokens;
    this.reset();
    let value: unknown;
    try { value = new Parser(tokens).message(); } catch (e) {
      // QEMU formats the message into 1024 bytes: a long keyword or escape is cut there.
      this.sink(undefined, `JSON parse error, ${Buffer.from((e as Error).message).subarray(0, 1023).toString()}`);
      return;
    }
    this.sink(value);
  }

  private tooLong(): void { this.skip(`JSON message longer than ${this.maxMessage} bytes; the rest of it is skipped`); }

  /** One error for this message; its remaining tokens are only counted, to find where it ends. */
  private skip(error: string): void {
    this.tokens = [];
    this.size = 0;
    this.parts = [];
    this.skipping = true;
    this.sink(undefined, error);
  }

  private reset(): void {
    this.tokens = [];
    this.size = 0;
    this.braces = 0;
    this.brackets = 0;
    this.skipping = false;
  }
}

// ignoreBOM: a U+FEFF is content here (the decoder would drop one at the start of each string).
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const NONCHARACTER = /\p{Noncharacter_Code_Point}/u;

/** Modified UTF-8 as QEMU takes it: strict UTF-8, "\xC0\x80" for NUL, no noncharacters. */
function decodeUtf8(bytes: Buffer): string {
  let s: string;
  try {
    if (bytes.includes(0xc0)) {
      s = bytes.toString('latin1').split('\xc0\x80').map((p) => utf8.decode(Buffer.from(p, 'latin1'))).join('\0');
    } else s = utf8.decode(bytes);
  } catch { throw new Error('invalid UTF-8 sequence in string'); }
  if (NONCHARACTER.test(s)) throw new Error('invalid UTF-8 sequence in string');
  return s;
}

const ESCAPES: Record<number, string> = { 0x22: '"', 0x27: "'", 0x5c: '\\', 0x2f: '/', 0x62: '\b', 0x66: '\f', 0x6e: '\n', 0x72: '\r', 0x74: '\t' };

/** A string token's value (with its quotes; escapes and encoding checked as QEMU's parser does). */
function decodeString(text: Buffer): string {
  const body = text.subarray(1, text.length - 1);
  if (!body.includes(0x5c)) return decodeUtf8(body);
  let out = '';
  let i = 0;
  while (i < body.length) {
    const bs = body.indexOf(0x5c, i);
    if (bs < 0) { out += decodeUtf8(body.subarray(i)); break; }
    out += decodeUtf8(body.subarray(i, bs));
    const e = body[bs + 1];
    if (ESCAPES[e] !== undefined) { out += ESCAPES[e]; i = bs + 2; continue; }
    if (e !== 0x75) throw new Error('invalid escape sequence in string');
    const hex = (at: number) => { const h = body.subarray(at, at + 4).toString('latin1'); return /^[0-9a-fA-F]{4}$/.test(h) ? parseInt(h, 16) : -1; };
    // QEMU quotes the four bytes after \u from the whole token, its closing quote included.
    const bad = (at: number) => new Error(`\\u${text.subarray(at + 1, at + 5).toString('utf8')} is not a valid Unicode character`);
    let cp = hex(bs + 2);
    i = bs + 6;
    if (cp < 0) throw bad(bs + 2);
    if (cp >= 0xd800 && cp <= 0xdbff && body[i] === 0x5c && body[i + 1] === 0x75) {
      const low = hex(i + 2);
      if (low < 0xdc00 || low > 0xdfff) throw bad(bs + 2); // QEMU names the leading one
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
      i += 6;
    }
    const ch = String.fromCodePoint(cp);
    if ((cp >= 0xd800 && cp <= 0xdfff) || NONCHARACTER.test(ch)) throw bad(bs + 2);
    out += ch;
  }
  return out;
}

/** Recursive descent over one message's tokens (depth is bounded by MAX_NESTING). */
class Parser {
  private at = 0;
  constructor(private readonly tokens: Token[]) {}

  message(): unknown { return this.value(); }

  private peek(): Token {
    const t = this.tokens[this.at];
    if (!t) throw new Error('premature EOI');
    return t;
  }
  private pop(): Token { const t = this.peek(); this.at++; return t; }

  private value(): unknown {
    const t = this.peek();
    switch (t.type) {
      case T.LCURLY: return this.object();
      case T.LSQUARE: return this.array();
      case T.STRING: this.at++; return decodeString(t.text!);
      case T.INTEGER: case T.FLOAT: this.at++; return Number(t.text!.toString('latin1'));
      case T.KEYWORD: {
        this.at++;
        const k = t.text!.toString('latin1');
        if (k === 'true') return true;
        if (k === 'false') return false;
        if (k === 'null') return null;
        throw new Error(`invalid keyword '${k}'`);
      }
      default: throw new Error('expecting value');
    }
  }

  private object(): Record<string, unknown> {
    this.pop();
    // A null prototype: keys like "__proto__" are plain members, as in any other JSON object.
    const obj = Object.create(null) as Record<string, unknown>;
    if (this.peek().type === T.RCURLY) { this.pop(); return obj; }
    for (;;) {
      const key = this.peek().type === T.STRING ? this.value() as string : (this.value(), null);
      if (key === null) throw new Error('key is not a string in object');
      if (this.pop().type !== T.COLON) throw new Error('missing : in object pair');
      const v = this.value();
      if (Object.prototype.hasOwnProperty.call(obj, key)) throw new Error('duplicate key');
      obj[key] = v;
      const sep = this.pop().type;
      if (sep === T.RCURLY) return obj;
      if (sep !== T.COMMA) throw new Error('expected separator in dict');
    }
  }

  private array(): unknown[] {
    this.pop();
    const list: unknown[] = [];
    if (this.peek().type === T.RSQUARE) { this.pop(); return list; }
    for (;;) {
      list.push(this.value());
      const sep = this.pop().type;
      if (sep === T.RSQUARE) return list;
      if (sep !== T.COMMA) throw new Error('expected separator in list');
    }
  }
}
