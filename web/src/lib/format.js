// Human-readable numbers. Sizes use decimal units (GB = 10^9 bytes), as Hugging Face shows them.

const UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB']

function scaled(value, units, base) {
  let i = 0
  while (Math.abs(value) >= base && i < units.length - 1) {
    value /= base
    i += 1
  }
  return [value, units[i]]
}

function digits(value) {
  if (value >= 100) return 0
  if (value >= 10) return 1
  return 2
}

export function formatBytes(n) {
  if (n == null || !Number.isFinite(n)) return '—'
  const [value, unit] = scaled(n, UNITS, 1000)
  return unit === 'B' ? `${value} B` : `${value.toFixed(digits(value))} ${unit}`
}

export function formatRate(bytesPerSecond) {
  if (!bytesPerSecond || !Number.isFinite(bytesPerSecond)) return '—'
  return `${formatBytes(bytesPerSecond)}/s`
}

/** Seconds → "45 s", "3 min 20 s", "1 h 05 min". */
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return '—'
  const s = Math.round(seconds)
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`
  const hours = Math.floor(m / 60)
  if (hours < 48) return `${hours} h ${String(m % 60).padStart(2, '0')} min`
  return `${Math.round(hours / 24)} days`
}

/** Parameter count → "8.0 B", "494 M", "1.2 T". */
export function formatParams(count) {
  if (!count || !Number.isFinite(count)) return null
  if (count >= 1e12) return `${(count / 1e12).toFixed(1)} T`
  if (count >= 1e9) return `${(count / 1e9).toFixed(1)} B`
  if (count >= 1e6) return `${Math.round(count / 1e6)} M`
  return count.toLocaleString('en-US')
}

/** Context length → "131,072". */
export function formatCount(n) {
  return n == null || !Number.isFinite(n) ? null : n.toLocaleString('en-US')
}

/** Accepts ISO 8601 strings, epoch seconds or epoch milliseconds. */
export function parseTime(value) {
  if (value == null || value === '') return null
  if (typeof value === 'number') return new Date(value < 1e12 ? value * 1000 : value)
  const t = Date.parse(value)
  return Number.isNaN(t) ? null : new Date(t)
}

export function formatRelative(date, now = Date.now()) {
  if (!date) return '—'
  const seconds = (now - date.getTime()) / 1000
  if (seconds < 45) return 'just now'
  const minutes = Math.round(seconds / 60)
  if (minutes < 60) return `${minutes} min ago`
  const hours = Math.round(minutes / 60)
  if (hours < 24) return `${hours} h ago`
  const days = Math.round(hours / 24)
  if (days < 30) return days === 1 ? 'yesterday' : `${days} days ago`
  return date.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' })
}

export function formatAbsolute(date) {
  return date ? date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) : ''
}

export function shortHash(hash) {
  return hash ? `${hash.slice(0, 8)}…${hash.slice(-4)}` : null
}
