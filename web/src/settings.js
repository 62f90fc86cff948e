// The chunk-size setting, for servers behind proxies that cap request bodies (Cloudflare: 100 MB).
import { $, show } from './lib/dom.js'

const KEY = 'modeldrop.chunkSize'
const MB = 1_000_000
const PRESETS = ['none', '50', '90']

function load() {
  const saved = localStorage.getItem(KEY) || 'none'
  if (PRESETS.includes(saved)) return { choice: saved, custom: '' }
  const custom = /^custom:(\d+)$/.exec(saved)
  return custom ? { choice: 'custom', custom: custom[1] } : { choice: 'none', custom: '' }
}

function toBytes({ choice, custom }) {
  if (choice === 'none') return Infinity
  const megabytes = Number(choice === 'custom' ? custom : choice)
  return Number.isInteger(megabytes) && megabytes > 0 ? megabytes * MB : null
}

/**
 * Wires the <select data-testid="chunk-size"> and its custom field.
 * `onChange(bytes)` receives Infinity for "no limit", otherwise a byte count.
 * Returns the current chunk size in bytes.
 */
export function initChunkSize(onChange) {
  const select = $('#chunk-size')
  const customWrap = $('#chunk-custom')
  const customInput = $('#chunk-size-custom')
  const error = $('#chunk-error')
  const state = load()

  select.value = state.choice
  customInput.value = state.custom
  show(customWrap, state.choice === 'custom')

  function apply() {
    state.choice = select.value
    state.custom = customInput.value.trim()
    show(customWrap, state.choice === 'custom')
    const bytes = toBytes(state)
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
  return toBytes(state) ?? Infinity
}
