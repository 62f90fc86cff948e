// The uploader: Uppy Dashboard (drop zone) + tus (resumable, retrying) + Golden Retriever
// (restores the queue after a reload), and the per-file cards that follow each install.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import GoldenRetriever from '@uppy/golden-retriever'
import Tus from '@uppy/tus'
import { confirmAction } from './dialogs.js'
import { Finalizer, isTerminal, statusPathFor } from './finalize.js'
import { api, authHeaders, messageFromBody, sentence } from './lib/api.js'
import { $, h, icon, setText, show } from './lib/dom.js'
import { formatBytes, formatCount, formatDuration, formatParams, formatRate, shortHash } from './lib/format.js'
import { initChunkSize } from './settings.js'
import { isProjector, planSets } from './sets.js'
import { UploadCard } from './upload-card.js'

const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000]
const SHA256 = /^[0-9a-f]{64}$/
const BASE_META = ['filename', 'filetype']
const STALLED_MS = 8000
const STEP_OF_STATE = { receiving: 0, finishing: 1, queued: 1, verifying: 2, installed: 3 }

export const isGguf = (name) => /\.gguf$/i.test(name || '')

/** Accepts pasted hashes with stray spaces, upper case or a "sha256:" prefix. */
export function normalizeSha(raw) {
  return (raw || '').trim().replace(/^sha-?256\s*[:=]?\s*/i, '').replace(/\s+/g, '').toLowerCase()
}

function shaProblem(value) {
  if (!value || SHA256.test(value)) return null
  if (/[^0-9a-f]/.test(value)) return 'A SHA-256 has only the characters 0–9 and a–f.'
  return `A SHA-256 is 64 hex characters; this one has ${value.length}.`
}

/** Bytes per second per file, smoothed, from Uppy's progress events. */
class SpeedMeter {
  #samples = new Map()

  sample(id, bytes) {
    const now = performance.now()
    const last = this.#samples.get(id)
    if (!last || bytes < last.bytes) {
      this.#samples.set(id, { t: now, bytes, rate: 0, moved: now })
      return
    }
    if (bytes > last.bytes) last.moved = now
    const seconds = (now - last.t) / 1000
    if (seconds < 0.5) return
    const instant = (bytes - last.bytes) / seconds
    last.rate = last.rate ? last.rate * 0.7 + instant * 0.3 : instant
    last.t = now
    last.bytes = bytes
  }

  started = (id) => this.#samples.has(id)
  stalled = (id) => this.#samples.has(id) && performance.now() - this.#samples.get(id).moved > STALLED_MS
  rate = (id) => (this.stalled(id) ? 0 : this.#samples.get(id)?.rate || 0)
  reset = (id) => this.#samples.delete(id)
}

/** A readable sentence for a failed tus request, preferring the server's own JSON message. */
function tusErrorMessage(err, status) {
  const response = err?.originalResponse || err?.cause?.originalResponse
  const body = response?.getBody?.()
  const fromServer = body ? messageFromBody(body, status) : null
  if (status === 413) {
    return `${sentence(fromServer || 'The request was too large for the server or a proxy in front of it')} ` +
      'Choose a smaller chunk size (e.g. 90 MB) under “Chunk size”, then retry: the upload continues where it stopped.'
  }
  if (fromServer) return fromServer
  if (!status) {
    return 'The connection to the server was lost and the automatic retries ran out. ' +
      'Check the network, then retry: the upload continues where it stopped.'
  }
  return `The server answered with HTTP ${status}.`
}

function ggufChips(gguf) {
  if (!gguf) return []
  const chips = []
  if (gguf.architecture) chips.push({ text: gguf.architecture, title: 'Architecture' })
  if (gguf.quantization) chips.push({ text: gguf.quantization, title: 'Quantization' })
  const params = formatParams(gguf.parameter_count) || gguf.size_label
  if (params) chips.push({ text: `${params} params`, title: 'Parameters' })
  if (gguf.context_length) chips.push({ text: `ctx ${formatCount(gguf.context_length)}`, title: 'Context length' })
  if (gguf.split_count > 1) chips.push({ text: `shard ${gguf.split_no + 1} of ${gguf.split_count}`, title: 'Split model' })
  if (gguf.type === 'mmproj' || gguf.architecture === 'clip') chips.push({ text: 'projector', title: 'Multimodal projector (mmproj)' })
  return chips
}

function serverChips(status) {
  const chips = ggufChips(status.gguf)
  const { set, llama_server: llama } = status
  if (set && set.count > 1 && !set.missing?.length) chips.push({ text: `all ${set.count} shards present`, tone: 'ok' })
  if (set?.size && !set.waiting) chips.push({ text: `set ${set.prefix}: ${set.files?.length || set.size} files`, tone: 'ok', title: 'Installed together' })
  if (llama?.error) chips.push({ text: `llama-server: ${llama.error}`, tone: 'danger' })
  else if (llama?.listed === true) chips.push({ text: 'listed by llama-server', tone: 'ok' })
  else if (llama?.listed === false) chips.push({ text: 'not listed by llama-server yet', tone: 'warn' })
  else if (llama?.notified) chips.push({ text: 'llama-server notified' })
  return chips
}

function stepsFor(reached, failed) {
  return [0, 1, 2, 3].map((i) => {
    if (i < reached) return 'done'
    if (i === reached) return failed ? 'failed' : 'active'
    return 'pending'
  })
}

export function initUploads({ config, auth, onInstalled }) {
  const endpoint = new URL(config.tus_endpoint || '/files/', location.origin).href
  const maxSize = config.max_size > 0 ? config.max_size : null
  const speed = new SpeedMeter()
  const errors = new Map() // fileID → readable upload error
  const shaDrafts = new Map() // fileID → what the user typed (may be invalid)
  const reached = new Map() // fileID → furthest install step seen
  const waitingForAuth = new Set()
  const cards = new Map()
  const list = $('#upload-list')
  const section = $('#uploads-section')
  const startButton = $('#start-upload')
  const clearButton = $('#clear-finished')
  const fileInput = $('#file-input')

  const uppy = new Uppy({
    id: 'modeldrop',
    autoProceed: false,
    restrictions: { allowedFileTypes: ['.gguf'], maxFileSize: maxSize },
    // Refuse non-GGUF files before Uppy's own checks so the message names the file; keep the duplicate check.
    onBeforeFileAdded: (file, files) => isGguf(file.name) && !Object.hasOwn(files, file.id),
    onBeforeUpload: () => invalidShaFiles().length === 0,
  })

  uppy.use(Dashboard, {
    inline: true,
    target: '#dropzone',
    width: '100%',
    height: 240,
    theme: 'auto',
    showSelectedFiles: false,
    hideUploadButton: true,
    hideCancelButton: true,
    hideProgressAfterFinish: true,
    hideProgressDetails: true, // per-file details are on the cards, in the page's units
    disableInformer: true,
    proudlyDisplayPoweredByUppy: false,
    note: `Only .gguf files${maxSize ? `, up to ${formatBytes(maxSize)} each` : ''}. For a split model, drop all its shards together; for a multimodal model, its mmproj file with it.`,
    locale: {
      strings: {
        dropPasteFiles: 'Drop .gguf files here or %{browseFiles}',
        browseFiles: 'browse',
        dropHint: 'Drop your .gguf files here',
      },
    },
  })

  uppy.use(Tus, {
    endpoint,
    retryDelays: RETRY_DELAYS,
    limit: 3,
    chunkSize: initChunkSize((bytes) => uppy.getPlugin('Tus').setOptions({ chunkSize: bytes }),
      config.max_append_size || null),
    removeFingerprintOnSuccess: false,
    allowedMetaFields: BASE_META,
    onBeforeRequest(req) {
      for (const [name, value] of Object.entries(authHeaders())) req.setHeader(name, value)
    },
  })

  uppy.use(GoldenRetriever, { expires: 7 * 24 * 60 * 60 * 1000 })

  const finalizer = new Finalizer({
    onUpdate: () => scheduleRender(),
    onInstalled: (entry) => onInstalled(entry),
  })

  /** The tus metadata sent for a file: filename, filetype and, when given, sha256. */
  function setSha(fileID, sha) {
    const file = uppy.getFile(fileID)
    if (!file) return
    uppy.setFileMeta(fileID, { sha256: sha || '' })
    uppy.setFileState(fileID, { tus: { ...file.tus, allowedMetaFields: metaFields({ ...file.meta, sha256: sha }) } })
  }

  /** The metadata fields sent for a file: filename and filetype, its sha256 and its set when it has them. */
  function metaFields(meta) {
    return [...BASE_META, ...(meta.sha256 ? ['sha256'] : []), ...(meta.set ? ['set', 'set_size'] : [])]
  }

  /** Files about to be sent: a projector with its model makes one set (sets.js), installed together; a projector
   * alone joins the installed model whose name is most like its own. */
  async function assignSets() {
    const files = uppy.getFiles().filter((f) => !f.progress.uploadStarted && !f.isGhost)
    let installed = []
    if (files.some((f) => isProjector(f.name))) {
      try {
        installed = ((await api('/api/models')).models || []).map((m) => m.llama?.id || m.name.replace(/\.gguf$/i, ''))
      } catch {
        // no list: a projector alone stays alone, and the server says why it cannot be installed
      }
    }
    const { sets, lone } = planSets(files, installed)
    const inSet = new Map(sets.flatMap((set) => set.files.map((f) => [f.id, set])))
    for (const file of files) {
      const set = inSet.get(file.id)
      const meta = { set: set?.name || '', set_size: set ? String(set.files.length) : '' }
      uppy.setFileMeta(file.id, meta)
      uppy.setFileState(file.id, { tus: { ...uppy.getFile(file.id).tus, allowedMetaFields: metaFields({ ...file.meta, ...meta }) } })
    }
    for (const projector of lone) {
      notify(`“${projector.name}” is a projector (mmproj), and no model dropped or installed is clearly its own: drop it together with its model, so both are installed as one model.`)
    }
  }

  function invalidShaFiles() {
    return [...shaDrafts.entries()].filter(([id, raw]) => uppy.getFile(id) && shaProblem(normalizeSha(raw)))
  }

  uppy.on('file-added', (file) => {
    uppy.setFileMeta(file.id, { filename: file.name, filetype: file.type || 'application/octet-stream' })
    // Choosing the last interrupted file again resumes the restored uploads right away.
    const { recoveredState } = uppy.getState()
    if (recoveredState && file.progress.uploadStarted && !uppy.getFiles().some((f) => f.isGhost)) {
      setTimeout(() => uppy.emit('restore-confirmed'), 0)
    }
  })

  uppy.on('file-removed', (file) => {
    errors.delete(file.id)
    shaDrafts.delete(file.id)
    speed.reset(file.id)
  })

  uppy.on('restriction-failed', (file, error) => {
    if (file && !isGguf(file.name)) {
      notify(`“${file.name}” was not added: only .gguf model files can be uploaded.`)
    } else {
      notify(error.message)
    }
  })

  uppy.on('upload-progress', (file, progress) => {
    if (file) speed.sample(file.id, progress.bytesUploaded)
  })

  uppy.on('upload-pause', (file) => file && speed.reset(file.id))

  uppy.on('upload-retry', (file) => file && errors.delete(file.id))
  uppy.on('retry-all', (files) => files.forEach((file) => errors.delete(file.id)))

  uppy.on('upload-error', (file, err, response) => {
    if (!file) return
    const status = response?.status ?? (err?.originalResponse || err?.cause?.originalResponse)?.getStatus?.() ?? 0
    const message = tusErrorMessage(err, status)
    errors.set(file.id, message)
    if (status === 401) {
      waitingForAuth.add(file.id)
      auth.prompt(`The server rejected the access token: ${sentence(message)} Enter a valid token and the upload continues.`)
    }
    scheduleRender()
  })

  uppy.on('upload-success', (file, response) => {
    if (!file) return
    const header = response?.body?.xhr?.getResponseHeader?.('Modeldrop-Status')
    finalizer.track(file.id, {
      name: file.name,
      size: file.size,
      statusPath: statusPathFor(response.uploadURL, header),
    })
  })

  uppy.on('state-update', () => scheduleRender())
  window.addEventListener('online', () => scheduleRender())
  window.addEventListener('offline', () => scheduleRender())
  setInterval(() => scheduleRender(), 1000) // speed, stall and "time left" age even without events

  fileInput.addEventListener('change', () => {
    const files = [...fileInput.files]
    fileInput.value = ''
    files.forEach((data) => {
      try {
        uppy.addFile({ source: 'file-input', name: data.name, type: data.type, data })
      } catch {
        // restriction errors are reported through 'restriction-failed'
      }
    })
  })

  clearButton.addEventListener('click', () => {
    finishedIds().forEach(forget)
  })

  startButton.addEventListener('click', () => {
    const invalid = invalidShaFiles()
    if (invalid.length) {
      cards.get(invalid[0][0])?.shaInput.focus()
      notify('Fix or clear the SHA-256 marked in red before starting.')
      return
    }
    if (uppy.getState().recoveredState) uppy.emit('restore-confirmed')
    else assignSets().finally(() => uppy.upload().catch(() => {})) // failures show on each card
  })

  async function onAction(action, fileID) {
    const file = uppy.getFile(fileID)
    switch (action) {
      case 'pause':
      case 'resume':
        uppy.pauseResume(fileID)
        break
      case 'retry':
        errors.delete(fileID)
        uppy.retryUpload(fileID).catch(() => {})
        break
      case 'reselect':
        fileInput.click()
        break
      case 'cancel': {
        const sent = file?.progress.bytesUploaded || 0
        const ok = await confirmAction({
          title: 'Cancel this upload?',
          message: sent > 0
            ? `${file.name}: the ${formatBytes(sent)} already sent will be discarded on the server.`
            : `${file?.name} will be removed from the queue.`,
          confirmLabel: 'Cancel upload',
        })
        if (ok && uppy.getFile(fileID)) uppy.removeFile(fileID)
        break
      }
      default: // remove, dismiss
        forget(fileID)
    }
    scheduleRender()
  }

  function onSha(fileID, raw) {
    shaDrafts.set(fileID, raw)
    const value = normalizeSha(raw)
    if (!shaProblem(value)) setSha(fileID, value)
    scheduleRender()
  }

  /** Drops a file from the queue and stops following its install. */
  function forget(fileID) {
    if (uppy.getFile(fileID)) uppy.removeFile(fileID)
    finalizer.forget(fileID)
  }

  /** Uploads the server has finished with, installed or failed. */
  function finishedIds() {
    return [...finalizer.entries.values()].filter((e) => isTerminal(e.status?.state)).map((e) => e.fileID)
  }

  /** Everything a card shows, from the Uppy file (while sending) and the server status (after). */
  function describe(fileID) {
    const file = uppy.getFile(fileID)
    const entry = finalizer.get(fileID)
    const size = file?.size ?? entry?.size
    const expected = file?.meta.sha256 || ''
    const view = {
      state: 'ready', label: 'Ready', tone: 'neutral', sizeText: formatBytes(size), actions: [],
      shaEditable: false, shaRaw: '', shaError: null, shaText: expected ? `Expected SHA-256 ${shortHash(expected)}` : '',
      percent: 0, busy: false, line: '', steps: stepsFor(-1), reason: null, details: [],
    }
    const progress = file?.progress
    const sent = progress?.bytesUploaded || 0
    const percent = size ? (sent / size) * 100 : 0
    const sentText = `${formatBytes(sent)} of ${formatBytes(size)}`

    // The finalizer only follows uploads whose last byte the server acknowledged, and Golden Retriever's
    // snapshot may be up to 500 ms older than that: after a reload, such a file can come back looking
    // unfinished (a ghost, or Ready when its blob survived). The server's status wins.
    if (file && !progress.uploadComplete && !entry) {
      if (file.isGhost) {
        return Object.assign(view, {
          state: 'interrupted', label: 'Interrupted', tone: 'warn', percent, actions: ['reselect', 'remove'],
          steps: stepsFor(0),
          line: `${sentText} sent before the page closed. Choose the same file again to continue from there.`,
        })
      }
      if (!progress.uploadStarted) {
        const raw = shaDrafts.get(fileID) ?? expected
        const problem = shaProblem(normalizeSha(raw))
        return Object.assign(view, {
          shaEditable: true, shaRaw: raw, shaError: problem, actions: ['remove'], percent: null,
          line: problem ? 'Fix the SHA-256 or clear it to start.'
            : expected ? 'Ready. The server will check the file against this SHA-256.' : 'Ready to upload.',
        })
      }
      Object.assign(view, { percent, steps: stepsFor(0), actions: ['pause', 'cancel'] })
      if (file.error) {
        return Object.assign(view, {
          state: 'error', label: 'Stopped', tone: 'danger', actions: ['retry', 'cancel'], steps: stepsFor(0, true),
          reason: errors.get(fileID) || file.error, line: `${sentText} sent.`,
        })
      }
      if (file.isPaused) {
        return Object.assign(view, { state: 'paused', label: 'Paused', actions: ['resume', 'cancel'], line: `Paused at ${sentText}.` })
      }
      if (!navigator.onLine) {
        return Object.assign(view, {
          state: 'offline', label: 'Offline', tone: 'warn',
          line: `${sentText} sent. The network is down; the upload continues by itself when it is back.`,
        })
      }
      if (!speed.started(fileID) && uppy.getState().recoveredState) {
        return Object.assign(view, {
          state: 'resumable', label: 'Ready to resume', actions: ['remove'],
          line: `${sentText} already sent. Press “Resume” to continue from there.`,
        })
      }
      if (!speed.started(fileID)) {
        return Object.assign(view, { state: 'waiting', label: 'Waiting', line: 'Waiting for a free upload slot…' })
      }
      const rate = speed.rate(fileID)
      const tail = speed.stalled(fileID) ? 'no progress right now, retrying automatically'
        : rate ? `${formatRate(rate)} · ${formatDuration((size - sent) / rate)} left` : 'measuring speed…'
      return Object.assign(view, { state: 'uploading', label: 'Uploading', tone: 'accent', line: `${sentText} · ${tail}` })
    }

    // All bytes are on the server: follow its queue → verify → install pipeline.
    const status = entry?.status
    const state = status?.state || 'finishing'
    const step = Math.max(reached.get(fileID) ?? -1, STEP_OF_STATE[state] ?? -1)
    reached.set(fileID, step)
    Object.assign(view, {
      state, label: state[0].toUpperCase() + state.slice(1), tone: 'accent', percent: null, busy: true,
      steps: stepsFor(step), details: status ? serverChips(status) : [],
      actions: isTerminal(state) || entry?.error ? ['dismiss'] : [],
    })
    if (status?.sha256) {
      view.shaText = expected && expected === status.sha256
        ? `SHA-256 matches the expected ${shortHash(expected)}`
        : `SHA-256 ${shortHash(status.sha256)}`
    }
    const waitNote = entry?.error ? ` (status unavailable: ${entry.error})` : ''
    const missing = status?.set?.missing || []
    if (!isTerminal(state) && status?.set?.size && status.set.waiting) {
      // A verified file of a model set (a model and its projector) waits, staged, for the rest of its set.
      const what = (status.detail || '').replace(/^verified; waiting for /, '') || `${status.set.waiting} more file(s)`
      return Object.assign(view, {
        label: 'Waiting for its set', tone: 'warn', busy: false, steps: stepsFor(3),
        line: `Verified. The model ${status.set.prefix} is installed once ${what} is uploaded too.${waitNote}`,
      })
    }
    if (!isTerminal(state) && missing.length) {
      // A verified shard of a split model waits, staged, for the rest of its set.
      const plural = missing.length > 1
      return Object.assign(view, {
        label: 'Waiting for shards', tone: 'warn', busy: false, steps: stepsFor(3),
        line: `Verified. The set is installed once shard${plural ? 's' : ''} ${missing.join(', ')} of ${status.set.count} ${plural ? 'are' : 'is'} uploaded too.${waitNote}`,
      })
    }
    switch (state) {
      case 'finishing':
        view.line = `All ${formatBytes(size)} sent. Asking the server for its status…${waitNote}`
        break
      case 'receiving':
        view.line = `The server is still storing the last bytes…${waitNote}`
        break
      case 'queued':
        view.line = `Received. Waiting for its turn to be verified…${waitNote}`
        break
      case 'verifying':
        view.line = `Checking the SHA-256 and the GGUF header…${waitNote}`
        break
      case 'installed':
        Object.assign(view, { tone: 'ok', percent: 100, busy: false, steps: stepsFor(4) })
        view.line = `Installed as ${status.final_name || status.filename}.`
        break
      case 'failed':
        Object.assign(view, { tone: 'danger', busy: false, steps: stepsFor(Math.max(step, 2), true) })
        view.line = 'Received, but not installed.'
        view.reason = status.reason || 'The server gave no reason.'
        break
      default:
        view.line = `Server state: ${state}${waitNote}`
    }
    return view
  }

  let renderQueued = false
  function scheduleRender() {
    if (renderQueued) return
    renderQueued = true
    requestAnimationFrame(() => {
      renderQueued = false
      render()
    })
  }

  function render() {
    const files = uppy.getFiles()
    const ids = [...finalizer.entries.keys()].filter((id) => !uppy.getFile(id)).concat(files.map((f) => f.id))
    for (const [id, card] of cards) {
      if (!ids.includes(id)) {
        card.el.remove()
        cards.delete(id)
      }
    }
    ids.forEach((id, index) => {
      let card = cards.get(id)
      if (!card) {
        const name = uppy.getFile(id)?.name ?? finalizer.get(id).name
        card = new UploadCard(id, name, { onAction, onSha })
        cards.set(id, card)
      }
      if (list.children[index] !== card.el) list.insertBefore(card.el, list.children[index] || null)
      card.update(describe(id))
    })
    show(section, ids.length > 0)
    show(clearButton, finishedIds().length > 0)

    const { recoveredState } = uppy.getState()
    const ready = files.filter((f) => !f.progress.uploadStarted && !f.isGhost)
    const resumable = recoveredState ? files.filter((f) => !f.progress.uploadComplete) : []
    const ghosts = files.filter((f) => f.isGhost).length
    const startable = recoveredState ? resumable : ready
    show(startButton, startable.length > 0)
    startButton.disabled = recoveredState ? ghosts > 0 : false
    startButton.title = startButton.disabled ? 'Choose the interrupted files again first' : ''
    const total = startable.reduce((sum, f) => sum + (f.size || 0), 0)
    const verb = recoveredState ? 'Resume' : 'Upload'
    setText($('.btn-label', startButton), `${verb} ${startable.length} file${startable.length === 1 ? '' : 's'} · ${formatBytes(total)}`)
  }

  auth.onChange(() => {
    waitingForAuth.forEach((id) => {
      errors.delete(id)
      if (uppy.getFile(id)) uppy.retryUpload(id).catch(() => {})
    })
    waitingForAuth.clear()
    finalizer.retryUnauthorized()
  })

  uppy.on('restored', () => {
    // Files whose last byte reached the server before the page closed are finished, whatever the snapshot says.
    for (const file of uppy.getFiles()) {
      if (file.progress.uploadComplete || !finalizer.get(file.id)) continue
      uppy.setFileState(file.id, {
        isGhost: false,
        error: null,
        progress: { ...file.progress, uploadStarted: file.progress.uploadStarted || Date.now(), uploadComplete: true,
          complete: true, percentage: 100, bytesUploaded: file.size },
      })
    }
    if (uppy.getFiles().every((f) => f.progress.uploadComplete)) uppy.setState({ recoveredState: null })
    scheduleRender()
  })
  finalizer.resumeAll()
  scheduleRender()
  return { uppy }
}

/** A dismissable message above the upload list (rejected files, hints). */
export function notify(message) {
  const box = $('#upload-notices')
  const item = h('div', { class: 'notice', role: 'alert', 'data-testid': 'notice' },
    icon('alert'), h('span', { class: 'notice-text' }, message),
    h('button', { type: 'button', class: 'btn-icon', 'aria-label': 'Dismiss', onClick: () => item.remove() }, icon('x')))
  box.append(item)
  while (box.children.length > 4) box.firstElementChild.remove()
}
