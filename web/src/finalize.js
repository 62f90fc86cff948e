// Follows an upload after its last byte: polls GET /api/uploads/<id> until it is installed or failed.
// Entries survive reloads (localStorage), so a page opened mid-verification picks up where it was.
import { api } from './lib/api.js'

const KEY = 'modeldrop.finalize'
const TERMINAL = new Set(['installed', 'failed'])
const POLL_MS = 1000
const ERROR_POLL_MS = 3000
const MAX_NOT_FOUND = 30

export const isTerminal = (state) => TERMINAL.has(state)

/** The status path from the Modeldrop-Status header, else /api/uploads/<last segment of the upload URL>. */
export function statusPathFor(uploadURL, header) {
  if (header && header.startsWith('/')) return header
  const id = new URL(uploadURL, location.origin).pathname.split('/').filter(Boolean).pop()
  return `/api/uploads/${id}`
}

export class Finalizer {
  /**
   * onUpdate(): something changed (re-render); onInstalled(entry): an upload just reached "installed".
   */
  constructor({ onUpdate, onInstalled }) {
    this.onUpdate = onUpdate
    this.onInstalled = onInstalled
    this.entries = new Map()
    this.timers = new Map()
    this.waitingForAuth = new Set()
    for (const entry of this.#load()) this.entries.set(entry.fileID, entry)
  }

  #load() {
    try {
      const saved = JSON.parse(localStorage.getItem(KEY) || '[]')
      return Array.isArray(saved) ? saved.filter((e) => e && e.fileID && e.statusPath) : []
    } catch {
      return []
    }
  }

  #save() {
    const entries = [...this.entries.values()].map(({ fileID, name, size, statusPath, status, addedAt }) => ({
      fileID, name, size, statusPath, status, addedAt,
    }))
    localStorage.setItem(KEY, JSON.stringify(entries))
  }

  get(fileID) {
    return this.entries.get(fileID)
  }

  /** Starts following the server-side status of a finished upload. */
  track(fileID, { name, size, statusPath }) {
    const existing = this.entries.get(fileID)
    if (existing && existing.statusPath === statusPath) return
    this.entries.set(fileID, { fileID, name, size, statusPath, status: null, error: null, addedAt: Date.now() })
    this.#save()
    this.#schedule(fileID, 0)
    this.onUpdate()
  }

  forget(fileID) {
    clearTimeout(this.timers.get(fileID))
    this.timers.delete(fileID)
    this.waitingForAuth.delete(fileID)
    if (this.entries.delete(fileID)) {
      this.#save()
      this.onUpdate()
    }
  }

  /** Resumes polling of every unfinished entry (at start-up). */
  resumeAll() {
    for (const entry of this.entries.values()) {
      if (!isTerminal(entry.status?.state)) this.#schedule(entry.fileID, 0)
    }
  }

  /** After a new token was saved: retry the polls that stopped on a 401. */
  retryUnauthorized() {
    for (const fileID of this.waitingForAuth) this.#schedule(fileID, 0)
    this.waitingForAuth.clear()
  }

  #schedule(fileID, delay) {
    clearTimeout(this.timers.get(fileID))
    this.timers.set(fileID, setTimeout(() => this.#poll(fileID), delay))
  }

  async #poll(fileID) {
    this.timers.delete(fileID)
    const entry = this.entries.get(fileID)
    if (!entry) return
    let delay = POLL_MS
    try {
      const status = await api(entry.statusPath)
      if (!this.entries.has(fileID)) return
      const wasInstalled = entry.status?.state === 'installed'
      entry.status = status
      entry.error = null
      entry.notFound = 0
      this.#save()
      if (status.state === 'installed' && !wasInstalled) this.onInstalled(entry)
      if (isTerminal(status.state)) {
        this.onUpdate()
        return
      }
    } catch (err) {
      if (!this.entries.has(fileID)) return
      entry.error = err.message
      if (err.status === 401) {
        this.waitingForAuth.add(fileID)
        this.onUpdate()
        return
      }
      if (err.status === 404) {
        entry.notFound = (entry.notFound || 0) + 1
        if (entry.notFound >= MAX_NOT_FOUND) {
          entry.error = 'The server does not know this upload (any more), so its install status is unknown.'
          this.onUpdate()
          return
        }
      }
      delay = ERROR_POLL_MS
    }
    this.onUpdate()
    this.#schedule(fileID, delay)
  }
}
