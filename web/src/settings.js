// The chunk-size setting, for servers behind proxies that cap request bodies (Cloudflare: 100 MB).
import { $, show } from './lib/dom.js'

const KEY = 'modeldrop.chunkSize'
const MB = 1_000_000
const PRESETS = ['none', '50', '90']

// With a server limit (its --max-append-size, /api/config's max_append_size) "server" stands where "none" was:
// the server refuses larger requests, so no choice sends more than it takes.
function load(serverLimit) {
  const unlimited = serverLimit ? 'server' : 'none'
  const saved = localStorage.getItem(KEY) || unlimited
  if (saved === 'none' || saved === 'server') return { choice: unlimited, custom: '' }
  if (PRESETS.includes(saved)) return { choice: saved, custom: '' }
  const custom = /^custom:(\d+)$/.exec(saved)
  return custom ? { choice: 'custom', custom: custom[1] } : { choice: unlimited, custom: '' }
}

function toBytes({ choice, custom }, serverLimit) {
  const cap = serverLimit || Infinity
  if (choice === 'none' || choice === 'server') return cap
  const megabytes = Number(choice === 'custom' ? custom : choice)
  return Number.isInteger(megabytes) && megabytes > 0 ? Math.min(megabytes * MB, cap) : null
}

/**
 * Wires the <select data-testid="chunk-size"> and its custom field.
 * `onChange(bytes)` receives Infinity for "no limit", otherwise a byte count.
 * `serverLimit`: the largest request the server takes (bytes), or null; when the user chose nothing, that is
 * the chunk size, and no choice goes above it.
 * Returns the current chunk size in bytes.
 */
export function initChunkSize(onChange, serverLimit = null) {
  const select = $('#chunk-size')
  const customWrap = $('#chunk-custom')
  const customInput = $('#chunk-size-custom')
  const error = $('#chunk-error')
  if (serverLimit) {
    const none = select.querySelector('option[value="none"]')
    none.value = 'server'
    none.textContent = `Server's limit (${Math.floor(serverLimit / MB)} MB per request)`
  }
  const state = load(serverLimit)

  select.value = state.choice
  customInput.value = state.custom
  show(customWrap, state.choice === 'custom')

  function apply() {
    state.choice = select.value
    state.custom = customInput.value.trim()
    show(customWrap, state.choice === 'custom')
    const bytes = toBytes(state, serverLimit)
    const invalid = bytes == null && !(state.choice === 'custom' && state.custom === '')
    show(error, invalid)
    customInput.setAttribute('aria-invalid', String(invalid))
    if (bytes == null) return
    localStorage.setItem(KEY, state.choice === 'custom' ? `custom:${state.custom}` : state.choice)
    onChange(bytes)
  }

  select.addEventListener('change', () => {
    apply()
    if (select.value === 'custom') customInput.focus()
  })
  customInput.addEventListener('input', apply)
  return toBytes(state, serverLimit) ?? (serverLimit || Infinity)
}
