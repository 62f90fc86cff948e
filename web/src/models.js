// The installed-models list: GET /api/models, shown as a table (cards on phones), with delete.
import { confirmAction } from './dialogs.js'
import { api } from './lib/api.js'
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

function llamaCell(llama) {
  const listed = llama?.listed
  const [tone, text] = listed === true ? ['ok', 'Listed'] : listed === false ? ['warn', 'Not listed'] : ['muted', 'Unknown']
  return h('span', { class: `status status-${tone}`, 'data-testid': 'llama-listed', 'data-listed': String(listed ?? 'unknown') },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), text)
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
  let lastData = null
  let pending = null

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

  function modelRows(model) {
    const gguf = model.gguf || {}
    const isSplit = model.kind === 'split' && model.shards?.length
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
      }, icon('chevron'), `Split · ${model.shards.length} shards`))
    }
    if (model.status && model.status !== 'ok') {
      sub.push(h('span', { class: 'chip chip-warn', 'data-testid': 'model-status' }, model.status))
    }
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
      cell('llama-server', llamaCell(model.llama_server)),
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
        h('ul', { class: 'shard-list' }, model.shards.map((shard) => h('li', { 'data-testid': `shard-${shard.name}` },
          h('span', { class: 'mono shard-name' }, shard.name), h('span', { class: 'muted' }, formatBytes(shard.size)))))))
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
      message: `This removes ${formatBytes(model.size)}${model.shards?.length ? ` (${model.shards.length} shards)` : ''} from the models directory. llama-server will no longer be able to load it.`,
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
        render(await api('/api/models'))
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
