// The access-token dialog: asks once, keeps the token in localStorage, re-asks after a 401.
import { api, onUnauthorized, sentence, token } from './lib/api.js'
import { $, setText, show } from './lib/dom.js'

export function createAuth(config) {
  const dialog = $('#token-dialog')
  const form = $('#token-form')
  const input = $('#token-input')
  const error = $('#auth-error')
  const save = $('#token-save')
  const change = $('#token-change')
  const listeners = new Set()

  function showError(message) {
    setText(error, message || '')
    show(error, !!message)
  }

  /** Opens the dialog; `message` explains why (e.g. the server's 401 text). */
  function prompt(message) {
    showError(message)
    if (!dialog.open) {
      input.value = token.get()
      dialog.showModal()
    }
    input.focus()
    input.select()
  }

  async function onSubmit(event) {
    event.preventDefault()
    const value = input.value.trim()
    if (!value) {
      showError('Enter the access token to continue.')
      return
    }
    save.disabled = true
    setText(save, 'Checking…')
    token.set(value)
    try {
      // Any authenticated endpoint tells us whether the server accepts the token.
      await api('/api/models', { quiet401: true })
    } catch (err) {
      if (err.status === 401) {
        token.clear()
        showError(`The server did not accept this token: ${sentence(err.message)}`)
        input.focus()
        input.select()
        return
      }
      // Server unreachable or another error: keep the token; the page reports the error elsewhere.
    } finally {
      save.disabled = false
      setText(save, 'Save token')
    }
    showError('')
    dialog.close()
    listeners.forEach((listener) => listener())
  }

  form.addEventListener('submit', onSubmit)
  dialog.addEventListener('cancel', (event) => {
    // Escape may close the dialog only when there is a token to fall back on.
    if (!token.get()) event.preventDefault()
  })
  change.addEventListener('click', () => prompt(''))
  show(change, !!config.auth_required)

  onUnauthorized((message) => {
    prompt(`The server rejected the access token: ${sentence(message)} Enter a valid token to continue.`)
  })

  if (config.auth_required && !token.get()) prompt('')

  return {
    prompt,
    /** True when requests can be made (no auth needed, or a token is stored). */
    ready: () => !config.auth_required || !!token.get(),
    /** Runs `listener` after a new token was saved. */
    onChange: (listener) => listeners.add(listener),
  }
}
