// The installed-models list: GET /api/models, shown as a table (cards on phones), with delete, and what
// llama-server says of each model (followed live through /api/llama/events), with Load now / Unload.
import { confirmAction } from './dialogs.js'
import { api, authHeaders } from './lib/api.js'
import { followEvents } from './lib/events.js'
import { $, h, icon, setText, show } from './lib/dom.js'
import {
  formatAbsolute, formatBytes, formatCount, formatParams, formatRelative, parseTime, shortHash,
} from './lib/format.js'

const COLUMNS = 10

/** Copies text, also on plain-http pages where navigator.clipboard is unavailable. */
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text)
    return
  }
  const area = h('textarea', { class: 'sr-only', readonly: true })
  area.value = text
  document.body.append(area)
  area.select()
  document.execCommand('copy')
  area.remove()
}

function cell(label, ...content) {
  return h('td', { 'data-label': label }, ...content)
}

function dash(value) {
  return value == null || value === '' ? h('span', { class: 'muted' }, '—') : value
}

const PART_ROLES = { model: 'model', shard: 'shard', projector: 'projector (mmproj)' }

/** What a model's folder holds, on its toggle: "Split · 3 shards", "Model + projector", "Split · 2 shards + projector". */
function folderLabel(model) {
  const shards = model.shards?.length || 0
  const base = shards ? `Split · ${shards} shards` : 'Model'
  return model.projector ? `${base} + projector` : base
}

/** llama-server's id for an entry of the models directory: a file without `.gguf`, a split set's folder. */
function modelId(name) {
  return name.toLowerCase().endsWith('.gguf') ? name.slice(0, -5) : name
}

// llama-server's states (server/llama.py) as badge tone and words
const LLAMA_STATES = {
  loaded: ['ok', 'Loaded', 'llama-server has this model running'],
  loading: ['busy', 'Loading', 'llama-server is starting this model'],
  unloaded: ['muted', 'Not loaded', 'llama-server lists this model; it starts on its first request, or with Load now'],
  sleeping: ['muted', 'Sleeping', 'llama-server put this model to sleep after being idle'],
  downloading: ['busy', 'Downloading', 'llama-server is downloading this model'],
  failed: ['danger', 'Failed', 'llama-server could not start this model: its log says why'],
  absent: ['warn', 'Not listed', 'llama-server does not list this model: is it in router mode on this models folder?'],
}
const RUNNING = new Set(['loaded', 'loading', 'sleeping'])

/** {key, tone, text, title} of a model's llama-server badge, from the server status and the model's state. */
export function llamaBadge(status, state) {
  if (!status?.configured) {
    return { key: 'off', tone: 'muted', text: '—', title: 'modeldrop runs without --llama-server-url: it cannot ask llama-server' }
  }
  if (status.reachable === false) {
    return { key: 'unreachable', tone: 'warn', text: 'Unreachable', title: status.error || 'llama-server does not answer' }
  }
  const known = LLAMA_STATES[state?.state]
  if (!known) return { key: 'unknown', tone: 'muted', text: 'Unknown', title: '' }
  let text = known[1]
  if (state.state === 'loading' && typeof state.progress === 'number') text += ` ${Math.round(state.progress * 100)}%`
  if (state.state === 'failed' && state.exit_code != null) text += ` (exit ${state.exit_code})`
  return { key: state.state, tone: known[0], text, title: known[2] }
}

function llamaCell(badge) {
  return h('span', { class: `status status-${badge.tone}`, title: badge.title, 'data-testid': 'llama-state', 'data-state': badge.key },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), badge.text)
}

function hashButton(model) {
  if (!model.sha256) return dash(null)
  const label = h('code', {}, shortHash(model.sha256))
  const button = h('button', {
    type: 'button',
    class: 'hash',
    title: `${model.sha256}\nClick to copy`,
    'aria-label': `Copy SHA-256 of ${model.name}`,
    'data-testid': `copy-sha-${model.name}`,
    'data-sha256': model.sha256,
    onClick: async () => {
      try {
        await copyText(model.sha256)
        button.classList.add('is-copied')
        setTimeout(() => button.classList.remove('is-copied'), 1500)
      } catch {
        window.prompt('Copy the SHA-256:', model.sha256)
      }
    },
  }, label, icon('copy'), icon('check'))
  return button
}

export function initModels() {
  const table = $('#models-table')
  const body = $('#models-body')
  const empty = $('#models-empty')
  const errorBox = $('#models-error')
  const disk = $('#disk')
  const expanded = new Set()
  const busy = new Set() // names whose Load/Unload request is on its way
  let lastData = null
  let pending = null
  // llama-server's view as the event stream last told it; null until it speaks after the list was read
  let live = null
  let follower = null
  let liveIds = ''
  let liveCount = 0 // documents the stream has sent: a Load/Unload answer older than the latest is not applied

  function showError(message) {
    setText($('#models-error-text'), message || '')
    show(errorBox, !!message)
  }

  function renderDisk(info) {
    show(disk, !!info)
    if (!info) return
    const used = info.total ? 1 - info.free / info.total : 0
    setText($('#disk-free'), `${formatBytes(info.free)} free of ${formatBytes(info.total)}`)
    $('#disk-meter').style.width = `${Math.round(used * 100)}%`
    disk.classList.toggle('is-low', info.total > 0 && info.free / info.total < 0.1)
    const staging = info.staging_free != null && info.staging_free !== info.free
    setText($('#disk-staging'), staging ? `Staging: ${formatBytes(info.staging_free)} free` : '')
  }

  function llamaStatus() {
    return live?.llama_server ?? lastData?.llama_server ?? null
  }

  function llamaStateOf(model) {
    const id = model.llama?.id ?? modelId(model.name)
    if (live) return live.models?.[id] ?? (live.llama_server?.reachable ? { id, state: 'absent' } : null)
    return model.llama
  }

  function llamaButton(model, badge) {
    if (badge.key === 'off' || badge.key === 'unreachable' || badge.key === 'unknown') return null
    const running = RUNNING.has(badge.key)
    const action = running ? 'unload' : 'load'
    const label = running ? 'Unload' : 'Load now'
    const pendingLabel = running ? 'Unloading…' : 'Loading…'
    return h('button', {
      type: 'button',
      class: 'btn btn-quiet btn-xs btn-llama',
      title: running ? 'Stop this model in llama-server, freeing its memory' : 'Have llama-server start this model now',
      'data-testid': `${action}-${model.name}`,
      'aria-label': `${label} ${model.name}`,
      disabled: busy.has(model.name),
      onClick: () => llamaAction(model, action),
    }, busy.has(model.name) ? pendingLabel : label)
  }

  async function llamaAction(model, action) {
    busy.add(model.name)
    render(lastData)
    const seen = liveCount
    try {
      const answer = await api(`/api/models/${encodeURIComponent(model.name)}/${action}`, { method: 'POST' })
      const state = answer?.llama
      // the stream may already have said what came after this answer (a load that failed at once): keep that
      if (state?.id && live && liveCount !== seen) { /* newer news from the stream */ }
      else if (state?.id && live) live = { ...live, models: { ...live.models, [state.id]: state } }
      else if (state?.id) model.llama = state
      showError('')
    } catch (err) {
      showError(`Could not ${action} ${model.name}: ${err.message}`)
    } finally {
      busy.delete(model.name)
      render(lastData)
    }
  }

  /** One document of /api/llama/events: the badges follow it; a change in what llama-server lists re-reads the list. */
  function applyLive(view) {
    const ids = Object.keys(view.models || {}).sort().join('\n')
    const listChanged = live !== null && ids !== liveIds
    liveCount += 1
    live = view
    liveIds = ids
    if (lastData) render(lastData)
    if (listChanged) load()
  }

  function follow(status) {
    if (!status?.configured) {
      follower?.stop()
      follower = null
      live = null
      return
    }
    if (follower) return
    follower = followEvents('/api/llama/events', {
      headers: authHeaders,
      onEvent: ({ event, data }) => {
        if (event !== 'llama') return
        try {
          applyLive(JSON.parse(data))
        } catch {
          // a malformed document: the next one will do
        }
      },
      onError: (err) => {
        if ([401, 403, 404, 409].includes(err.status)) follower = null // load() starts it again
      },
    })
  }

  function modelRows(model) {
    const gguf = model.gguf || {}
    // a folder: a split model's shards, or a model (one file or shards) and its projector, listed as their parts
    const parts = model.kind === 'file' ? [] : model.parts || model.shards || []
    const isSplit = parts.length > 0
    const open = isSplit && expanded.has(model.name)
    const installed = parseTime(model.installed_at ?? model.mtime)
    const sub = []
    if (isSplit) {
      sub.push(h('button', {
        type: 'button',
        class: 'shards-toggle',
        'aria-expanded': String(open),
        'data-testid': `shards-toggle-${model.name}`,
        onClick: () => {
          if (expanded.has(model.name)) expanded.delete(model.name)
          else expanded.add(model.name)
          render(lastData)
        },
      }, icon('chevron'), folderLabel(model)))
    }
    if (model.status && model.status !== 'ok') {
      sub.push(h('span', { class: 'chip chip-warn', 'data-testid': 'model-status' }, model.status))
    }
    const badge = llamaBadge(llamaStatus(), llamaStateOf(model))
    const row = h('tr', { class: open ? 'model-row is-open' : 'model-row', 'data-testid': `model-row-${model.name}`, 'data-kind': model.kind },
      h('td', { class: 'cell-name', 'data-label': 'Model' },
        h('div', { class: 'model-name', title: model.path || model.name }, model.name),
        sub.length ? h('div', { class: 'model-sub' }, sub) : null),
      cell('Size', formatBytes(model.size)),
      cell('Architecture', dash(gguf.architecture)),
      cell('Quantization', gguf.quantization ? h('span', { class: 'chip' }, gguf.quantization) : dash(null)),
      cell('Parameters', dash(formatParams(gguf.parameter_count) || gguf.size_label)),
      cell('Context', dash(formatCount(gguf.context_length))),
      cell('SHA-256', hashButton(model)),
      cell('Installed', installed
        ? h('time', { datetime: installed.toISOString(), title: formatAbsolute(installed), 'data-relative': '' }, formatRelative(installed))
        : dash(null)),
      cell('llama-server', h('div', { class: 'llama-cell' }, llamaCell(badge), llamaButton(model, badge))),
      h('td', { class: 'cell-actions' },
        h('button', {
          type: 'button',
          class: 'btn btn-quiet btn-sm btn-danger-quiet btn-delete',
          title: 'Delete',
          'data-testid': `delete-${model.name}`,
          'aria-label': `Delete ${model.name}`,
          onClick: (event) => remove(model, event.currentTarget),
        }, icon('trash'), h('span', { class: 'btn-label' }, 'Delete'))))
    if (!open) return [row]
    const shards = h('tr', { class: 'shards-row', 'data-testid': `shards-${model.name}` },
      h('td', { colspan: String(COLUMNS) },
        h('ul', { class: 'shard-list' }, parts.map((shard) => h('li', { 'data-testid': `shard-${shard.name}`, 'data-role': shard.role || 'shard' },
          h('span', { class: 'mono shard-name' }, shard.name),
          model.kind === 'set' ? h('span', { class: 'chip' }, PART_ROLES[shard.role] || shard.role) : null,
          h('span', { class: 'muted' }, formatBytes(shard.size)))))))
    return [row, shards]
  }

  function render(data) {
    lastData = data
    const when = (m) => parseTime(m.installed_at ?? m.mtime)?.getTime() || 0
    const models = [...(data.models || [])].sort((a, b) => when(b) - when(a))
    body.replaceChildren(...models.flatMap(modelRows))
    show(table, models.length > 0)
    show(empty, models.length === 0)
    setText($('#models-count'), models.length ? `${models.length}` : '')
    renderDisk(data.disk)
  }

  async function remove(model, button) {
    const ok = await confirmAction({
      title: `Delete ${model.name}?`,
      message: `This removes ${formatBytes(model.size)}${model.projector ? ' (the model and its projector)' : model.shards?.length ? ` (${model.shards.length} shards)` : ''} from the models directory. llama-server will no longer be able to load it.`,
      confirmLabel: 'Delete model',
    })
    if (!ok) return
    button.disabled = true
    setText($('.btn-label', button), 'Deleting…')
    try {
      await api(`/api/models/${encodeURIComponent(model.name)}`, { method: 'DELETE' })
      showError('')
    } catch (err) {
      showError(`Could not delete ${model.name}: ${err.message}`)
    }
    await load()
  }

  /** (Re)loads the list; concurrent calls share one request. */
  function load() {
    pending ||= (async () => {
      table.setAttribute('aria-busy', 'true')
      try {
        const data = await api('/api/models')
        live = null // the list is fresher than the stream's last word; the stream's next one wins again
        render(data)
        follow(data.llama_server)
        showError('')
      } catch (err) {
        showError(err.status === 401 ? 'Enter the access token to see the installed models.' : `Could not load the models: ${err.message}`)
      } finally {
        table.removeAttribute('aria-busy')
        setText($('#models-loading'), '')
        pending = null
      }
    })()
    return pending
  }

  $('#models-refresh').addEventListener('click', () => load())
  $('#models-retry').addEventListener('click', () => load())
  setInterval(() => {
    document.querySelectorAll('time[data-relative]').forEach((el) => setText(el, formatRelative(new Date(el.dateTime))))
  }, 60_000)
  return { load }
}
