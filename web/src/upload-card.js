// One card per file in the "Uploads" list: progress while sending, then the server's install steps.
import { h, icon, setText, show } from './lib/dom.js'

const STEPS = ['Upload', 'Queued', 'Verify', 'Installed']

const ACTIONS = {
  pause: { label: 'Pause', icon: 'pause' },
  resume: { label: 'Resume', icon: 'play' },
  retry: { label: 'Retry', icon: 'retry' },
  reselect: { label: 'Choose file…', icon: 'refresh' },
  cancel: { label: 'Cancel', icon: 'x', quiet: true },
  remove: { label: 'Remove', icon: 'x', quiet: true },
  dismiss: { label: 'Dismiss', icon: 'x', quiet: true },
}

export class UploadCard {
  /** handlers: onAction(action, fileID), onSha(fileID, rawValue) */
  constructor(fileID, name, handlers) {
    this.fileID = fileID
    this.handlers = handlers
    this.actionsKey = null

    this.pill = h('span', { class: 'pill', 'data-testid': 'state' })
    this.actions = h('div', { class: 'upload-actions' })
    this.size = h('span', { class: 'upload-size' })

    const inputId = `sha-${fileID}`
    this.shaInput = h('input', {
      id: inputId,
      class: 'input mono',
      type: 'text',
      inputmode: 'latin',
      autocomplete: 'off',
      autocapitalize: 'off',
      spellcheck: 'false',
      placeholder: 'Paste the expected SHA-256, e.g. from Hugging Face',
      'aria-describedby': `${inputId}-hint`,
      'data-testid': 'sha256-input',
      onInput: () => handlers.onSha(fileID, this.shaInput.value),
    })
    this.shaError = h('p', { class: 'field-error', id: `${inputId}-hint`, 'data-testid': 'sha256-error', hidden: true })
    this.shaEdit = h('div', { class: 'sha-edit' },
      h('label', { for: inputId, class: 'field-label' }, 'Expected SHA-256 ', h('span', { class: 'muted' }, '(optional)')),
      this.shaInput, this.shaError)
    this.shaShow = h('p', { class: 'sha-show muted', 'data-testid': 'sha256' })

    this.fill = h('div', { class: 'bar-fill' })
    this.bar = h('div', {
      class: 'bar', role: 'progressbar', 'aria-label': `Progress of ${name}`,
      'aria-valuemin': '0', 'aria-valuemax': '100', 'data-testid': 'progress',
    }, this.fill)
    this.metaText = h('span', { class: 'meta-text', 'data-testid': 'meta' })
    this.metaPercent = h('span', { class: 'meta-percent' })

    this.stepItems = STEPS.map((label) => h('li', { class: 'step' }, h('span', { class: 'step-dot' }), h('span', { class: 'step-label' }, label)))
    this.reason = h('div', { class: 'reason', role: 'alert', 'data-testid': 'reason', hidden: true })
    this.details = h('div', { class: 'details', 'data-testid': 'details', hidden: true })

    this.el = h('article', { class: 'upload card-inner', 'data-testid': `upload-status-${name}` },
      h('div', { class: 'upload-head' },
        h('div', { class: 'upload-title' },
          h('h3', { class: 'upload-name', title: name }, name),
          h('div', { class: 'upload-sub' }, this.pill, this.size)),
        this.actions),
      this.shaEdit, this.shaShow,
      this.bar,
      h('div', { class: 'upload-meta' }, this.metaText, this.metaPercent),
      this.reason,
      h('ol', { class: 'steps', 'aria-label': 'Install steps' }, this.stepItems),
      this.details)
  }

  #renderActions(actions) {
    const key = actions.join(',')
    if (key === this.actionsKey) return
    this.actionsKey = key
    this.actions.replaceChildren(...actions.map((action) => {
      const spec = ACTIONS[action]
      return h('button', {
        type: 'button',
        class: spec.quiet ? 'btn btn-quiet btn-sm' : 'btn btn-sm',
        'data-testid': action,
        onClick: () => this.handlers.onAction(action, this.fileID),
      }, icon(spec.icon), h('span', { class: 'btn-label' }, spec.label))
    }))
  }

  update(view) {
    this.el.dataset.state = view.state
    this.pill.className = `pill pill-${view.tone}`
    setText(this.pill, view.label)
    setText(this.size, view.sizeText)
    this.#renderActions(view.actions)

    show(this.shaEdit, view.shaEditable)
    if (view.shaEditable && document.activeElement !== this.shaInput && this.shaInput.value !== view.shaRaw) {
      this.shaInput.value = view.shaRaw
    }
    this.shaInput.setAttribute('aria-invalid', String(!!view.shaError))
    setText(this.shaError, view.shaError)
    show(this.shaError, !!view.shaError)
    setText(this.shaShow, view.shaText)
    show(this.shaShow, !view.shaEditable && !!view.shaText)

    const indeterminate = view.percent == null
    show(this.bar, !indeterminate || view.busy)
    this.bar.classList.toggle('is-indeterminate', indeterminate && view.busy)
    this.bar.classList.toggle('is-done', view.state === 'installed')
    this.bar.classList.toggle('is-failed', view.tone === 'danger')
    const width = indeterminate ? (view.busy ? 100 : 0) : view.percent
    this.fill.style.width = `${width}%`
    if (indeterminate) this.bar.removeAttribute('aria-valuenow')
    else this.bar.setAttribute('aria-valuenow', String(Math.round(view.percent)))
    setText(this.metaText, view.line)
    setText(this.metaPercent, indeterminate ? '' : `${Math.floor(view.percent)}%`)

    view.steps.forEach((status, i) => {
      this.stepItems[i].className = `step step-${status}`
    })

    setText(this.reason, view.reason)
    show(this.reason, !!view.reason)
    const detailsKey = JSON.stringify(view.details)
    if (detailsKey !== this.detailsKey) {
      this.detailsKey = detailsKey
      this.details.replaceChildren(...view.details.map((d) => h('span', { class: `chip${d.tone ? ` chip-${d.tone}` : ''}`, title: d.title }, d.text)))
    }
    show(this.details, view.details.length > 0)
  }
}
