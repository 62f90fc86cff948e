// The confirmation dialog shared by "delete model" and "cancel upload".
import { $, setText } from './lib/dom.js'

/**
 * Asks a yes/no question in the page's <dialog data-testid="confirm-dialog">.
 * Resolves true when the user confirms.
 */
export function confirmAction({ title, message, confirmLabel = 'Confirm', danger = true }) {
  const dialog = $('#confirm-dialog')
  const ok = $('#confirm-ok')
  setText($('#confirm-title'), title)
  setText($('#confirm-message'), message)
  setText(ok, confirmLabel)
  ok.classList.toggle('btn-danger', danger)
  ok.classList.toggle('btn-primary', !danger)
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.removeEventListener('close', onClose)
      ok.removeEventListener('click', onOk)
      resolve(answer)
    }
    const onOk = (event) => {
      event.preventDefault()
      dialog.close('ok')
    }
    const onClose = () => done(dialog.returnValue === 'ok')
    dialog.returnValue = ''
    dialog.addEventListener('close', onClose)
    ok.addEventListener('click', onOk)
    dialog.showModal()
    $('#confirm-cancel').focus()
  })
}
